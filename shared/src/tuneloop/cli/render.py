"""Rich rendering for the CLI and the demo: tables, the training progress bar, job watching."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .api import ApiError, GatewayAPI

TERMINAL_JOB = ("succeeded", "failed", "cancelled")


def when(ts: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return "-"


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def list_table(title: str, rows: list[dict], columns: list[tuple[str, Callable[[dict], Any]]]) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for name, _ in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*[fmt(get(row)) for _, get in columns])
    if not rows:
        table.caption = "(none)"
    return table


def kv_table(title: str, pairs: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for k, v in pairs:
        table.add_row(k, fmt(v))
    return table


# -- datasets ----------------------------------------------------------------------------------
DATASET_COLUMNS: list[tuple[str, Callable[[dict], Any]]] = [
    ("id", lambda d: d.get("id")),
    ("name", lambda d: d.get("name")),
    ("format", lambda d: d.get("format")),
    ("train", lambda d: (d.get("counts") or {}).get("train")),
    ("eval", lambda d: (d.get("counts") or {}).get("eval")),
    ("invalid", lambda d: (d.get("counts") or {}).get("invalid")),
    ("warnings", lambda d: len(d.get("warnings") or [])),
    ("created", lambda d: when(d.get("created_at"))),
]


def dataset_table(ds: dict) -> Table:
    counts = ds.get("counts") or {}
    pairs = [("id", ds.get("id")), ("name", ds.get("name")), ("status", ds.get("status")),
             ("format", ds.get("format")), ("created", when(ds.get("created_at")))]
    pairs += [(f"rows {k}", v) for k, v in counts.items()]
    pairs += [("in use by", ", ".join(ds.get("in_use_by") or []) or "-")]
    for w in ds.get("warnings") or []:
        pairs.append(("warning", w.get("message", w) if isinstance(w, dict) else w))
    return kv_table(f"dataset {ds.get('id')}", pairs)


# -- jobs --------------------------------------------------------------------------------------
JOB_COLUMNS: list[tuple[str, Callable[[dict], Any]]] = [
    ("id", lambda j: j.get("id")),
    ("status", lambda j: j.get("status")),
    ("dataset", lambda j: j.get("dataset_id")),
    ("base", lambda j: j.get("base_model")),
    ("backend", lambda j: j.get("backend")),
    ("step", lambda j: _step(j.get("progress") or {})),
    ("loss", lambda j: (j.get("progress") or {}).get("loss")),
    ("eval loss", lambda j: (j.get("progress") or {}).get("eval_loss")),
    ("model", lambda j: j.get("model_id")),
    ("created", lambda j: when(j.get("created_at"))),
]


def _step(p: dict) -> str:
    return f"{p.get('step') or 0}/{p.get('total_steps') or '?'}"


def job_table(job: dict) -> Table:
    p = job.get("progress") or {}
    pairs = [(k, job.get(k)) for k in ("id", "status", "dataset_id", "base_model", "backend", "model_id")]
    pairs += [("step", _step(p)), ("epoch", p.get("epoch")), ("loss", p.get("loss")),
              ("eval loss", p.get("eval_loss")), ("learning rate", p.get("learning_rate")),
              ("tokens/s", p.get("tokens_per_s")), ("eta", _eta(p.get("eta_s")))]
    pairs += [(f"hp {k}", v) for k, v in (job.get("hyperparameters") or {}).items()]
    if job.get("error"):
        pairs.append(("error", f"{job['error'].get('code')}: {job['error'].get('message')}"))
    pairs += [("created", when(job.get("created_at"))), ("started", when(job.get("started_at"))),
              ("finished", when(job.get("finished_at")))]
    return kv_table(f"job {job.get('id')}", pairs)


def _eta(s: Any) -> str:
    if s is None:
        return "-"
    s = int(float(s))
    return f"{s // 60}:{s % 60:02d}"


class _StepColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = f"{task.total:.0f}" if task.total is not None else "?"
        return Text(f"step {task.completed:.0f}/{total}")


class _MetricsColumn(ProgressColumn):
    """``loss 1.23 | eval 1.30 | 95 tok/s | ETA 3:12`` from the task's fields."""

    def render(self, task: Task) -> Text:
        f = task.fields
        parts = [f"loss {fmt(f.get('loss'), 4)}", f"eval {fmt(f.get('eval_loss'), 4)}"]
        if f.get("tokens_per_s"):
            parts.append(f"{float(f['tokens_per_s']):.0f} tok/s")
        parts.append(f"ETA {_eta(f.get('eta_s'))}")
        if f.get("phase"):
            parts.append(str(f["phase"]))
        return Text(" | ".join(parts))


def training_progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    _StepColumn(), _MetricsColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


class JobWatcher:
    """Follow a job's events (SSE, falling back to polling) and drive a progress bar.

    Returns the final job object when the job reaches a terminal state.
    """

    def __init__(self, api: GatewayAPI, console: Console, *, poll_s: float = 1.0,
                 on_event: Callable[[dict], None] | None = None) -> None:
        self.api, self.console, self.poll_s, self.on_event = api, console, poll_s, on_event
        self.seq = 0

    def watch(self, job_id: str, *, use_sse: bool = True, timeout_s: float | None = None) -> dict:
        deadline = time.monotonic() + timeout_s if timeout_s else None
        with training_progress(self.console) as progress:
            task = progress.add_task(job_id, total=None, phase="queued")
            job = self.api.job(job_id)
            self._apply_job(progress, task, job)
            if use_sse and job.get("status") not in TERMINAL_JOB:
                try:
                    for ev in self.api.stream_job_events(job_id, after=self.seq):
                        self._apply_event(progress, task, ev)
                        if ev.get("type") in ("done", "error", "cancelled") or self._expired(deadline):
                            break
                except ApiError as exc:
                    if exc.status not in (0, 404, 405, 501):
                        raise
            while True:  # polling: the fallback, and the final status after the stream ends
                for ev in self.api.job_events(job_id, after=self.seq or None, limit=500):
                    self._apply_event(progress, task, ev)
                job = self.api.job(job_id)
                self._apply_job(progress, task, job)
                if job.get("status") in TERMINAL_JOB:
                    return job
                if self._expired(deadline):
                    raise ApiError(0, "timeout", f"job {job_id} still {job.get('status')} "
                                   f"after {timeout_s:.0f}s")
                time.sleep(self.poll_s)

    @staticmethod
    def _expired(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() > deadline

    def _apply_job(self, progress: Progress, task: Any, job: dict) -> None:
        p = job.get("progress") or {}
        upd: dict[str, Any] = {"phase": job.get("status")}
        if p.get("total_steps"):
            upd["total"] = p["total_steps"]
        if p.get("step") is not None:
            upd["completed"] = p["step"]
        for k in ("loss", "eval_loss", "tokens_per_s", "eta_s"):
            if p.get(k) is not None:
                upd[k] = p[k]
        if job.get("status") == "succeeded" and p.get("total_steps"):
            upd["completed"], upd["eta_s"] = p["total_steps"], 0
        progress.update(task, **upd)

    def _apply_event(self, progress: Progress, task: Any, ev: dict) -> None:
        seq = ev.get("seq")
        if isinstance(seq, int):
            if seq <= self.seq:
                return
            self.seq = seq
        if self.on_event:
            self.on_event(ev)
        kind, d = ev.get("type"), ev.get("data") or {}
        upd: dict[str, Any] = {}
        if d.get("total_steps"):
            upd["total"] = d["total_steps"]
        if d.get("step") is not None:
            upd["completed"] = d["step"]
        for k in ("loss", "eval_loss", "tokens_per_s", "eta_s"):
            if d.get(k) is not None:
                upd[k] = d[k]
        if kind in ("train_begin", "metrics"):
            upd["phase"] = "training"
        elif kind in ("export", "export_check", "train_end"):
            upd["phase"] = "exporting"
        if upd:
            progress.update(task, **upd)
        if kind in ("warning", "error", "resumed", "export_check"):
            style = {"warning": "yellow", "error": "red"}.get(kind, "cyan")
            msg = d.get("message") or d.get("detail") or d
            progress.console.print(f"[{style}]{kind}[/]: {msg}")


# -- evals -------------------------------------------------------------------------------------
def _val(m: Any) -> str:
    if isinstance(m, dict):
        v = m.get("value")
        return "-" if v is None else f"{v:.3f}"
    return fmt(m, 3)


def _eval_rows(report: dict) -> tuple[list[dict], list[tuple[str, list[str]]]]:
    """Metrics as rows, one cell per target (what reads at 80 columns)."""
    targets = report.get("targets") or []
    kind = (report.get("task") or {}).get("kind")
    ms = [t.get("metrics") or {} for t in targets]
    rows: list[tuple[str, list[str]]] = [("task score", [_val(m.get("task_score")) for m in ms])]
    if kind == "json" or any(m.get("json_valid") for m in ms):
        rows.append(("json valid", [_val(m.get("json_valid")) for m in ms]))
    fields: list[str] = []
    for m in ms:
        fields += [k for k in m.get("fields") or {} if k not in fields]
    rows += [(f"  {k}", [_val((m.get("fields") or {}).get(k)) for m in ms]) for k in fields]
    rows += [("rougeL", [_val(m.get("rougeL")) for m in ms]),
             ("general", [_val(m.get("general")) for m in ms]),
             ("p50 ms", [fmt((m.get("latency_ms") or {}).get("p50"), 4) for m in ms]),
             ("tok/s", [fmt(m.get("tokens_per_s"), 3) for m in ms]),
             ("failed", [f"{m.get('errors', 0)}/{m.get('generations', '?')}" for m in ms])]
    return targets, rows


def _target_header(t: dict) -> str:
    role = t.get("role")
    if role == "base_kshot":
        return f"{t.get('name')}\n(base {t.get('shots', '?')}-shot)"
    return f"{t.get('name')}\n({role})" if role and role != t.get("name") else str(t.get("name"))


def eval_table(run: dict, width: int = 80) -> Group:
    """Base, base k-shot, candidate, production...: metrics as rows and targets as columns,
    split into several tables when the targets do not fit in ``width`` columns."""
    report = run.get("report") or {}
    targets, rows = _eval_rows(report)
    title = (f"eval {run.get('id')} ({report.get('n_examples', '?')} held-out examples, "
             f"primary metric {(report.get('task') or {}).get('primary_metric', '?')})")
    if run.get("status") and run.get("status") != "succeeded":
        title += f" [{run['status']}]"
    label_w = max([6] + [len(r[0]) for r in rows])
    col_w = [max([len(line) for line in _target_header(t).split("\n")] + [len(r[1][i]) for r in rows])
             for i, t in enumerate(targets)]
    groups: list[list[int]] = [[]]
    used = label_w + 4
    for i, w in enumerate(col_w):
        if groups[-1] and used + w + 3 > width:
            groups.append([])
            used = label_w + 4
        groups[-1].append(i)
        used += w + 3
    tables = []
    for n, group in enumerate(groups):
        table = Table(title=title if n == 0 else None, header_style="bold", width=None)
        table.add_column("metric", justify="left", no_wrap=True)
        for i in group:
            table.add_column(_target_header(targets[i]), justify="right", no_wrap=True)
        for label, cells in rows:
            table.add_row(label, *[cells[i] for i in group])
        tables.append(table)
    models = "  ".join(f"{t.get('name')} = {t.get('model')}" for t in targets)
    return Group(*tables, Text(models, style="dim", overflow="fold"))


def comparison_lines(run: dict) -> list[str]:
    """Uplift of each target against each baseline (paired 95% CI), failed requests, advice."""
    report = run.get("report") or {}
    lines = []
    for c in report.get("comparisons") or []:
        u = c.get("uplift") or {}
        line = f"{c.get('target')} vs {c.get('vs')}: uplift {u.get('value', 0):+.3f}"
        if "ci_low" in u:
            line += f" (95% CI {u['ci_low']:+.3f} .. {u['ci_high']:+.3f})"
        g = c.get("general_drop")
        if g:
            line += f", general-suite drop {g.get('value', 0):+.3f}"
            if "ci_high" in g:
                line += f" (<= {g['ci_high']:+.3f})"
        lines.append(line)
    failed = report.get("failed_requests") or []
    for f in failed[:5]:
        where = f"line {f['line']}" if f.get("line") else f"{f.get('suite')} #{f.get('index')}"
        lines.append(f"failed: {f.get('target')} {where} after {f.get('attempts')} attempt(s): "
                     f"{str(f.get('error'))[:80]}")
    if len(failed) > 5 or report.get("n_failed_requests", 0) > len(failed):
        lines.append(f"failed: ... {report.get('n_failed_requests', len(failed)) - min(5, len(failed))} more")
    return lines + list(report.get("advice") or [])


DECISION_STYLE = {"promoted": "green", "rejected": "red", "inconclusive": "yellow", "failed": "red"}


def print_decision(console: Console, decision: dict) -> None:
    """A gate decision: its verdict, the reasons (one per check), the eval table it decided on."""
    status = decision.get("status", "?")
    console.print(f"[bold {DECISION_STYLE.get(status, 'white')}]{status}[/] "
                  f"(alias '{decision.get('alias')}', eval {decision.get('eval_id') or '-'})")
    for reason in decision.get("reasons") or []:
        console.print(f"  {reason}")
    table = (decision.get("evidence") or {}).get("table")
    if table:
        console.print(Text(table))


def estimate_lines(est: dict) -> str:
    """A dry run, readable at 80 columns: what the job would do and whether it fits."""
    gib = 1 / 2**30
    dev, mem, t, st = est.get("device") or {}, est.get("memory") or {}, est.get("time") or {}, est.get("steps") or {}
    hp = est.get("hyperparameters") or {}
    lines = [
        f"dry run: {est.get('base_model')} on {dev.get('name')} ({est.get('backend')})",
        f"  rows      {est['rows']['train']} train, {est['rows']['eval']} eval; "
        f"{est['tokens']['train']:,} train tokens (median row {est['tokens']['median']}, "
        f"{est['tokens']['truncated_rows']} truncated)",
        f"  layout    batch {hp.get('per_device_train_batch_size')} x accumulation "
        f"{hp.get('gradient_accumulation_steps')}, packing {hp.get('packing')}, "
        f"4-bit {hp.get('load_in_4bit')}, checkpointing {hp.get('gradient_checkpointing')}",
        f"  steps     {st.get('total')} ({st.get('per_epoch')} per epoch x {hp.get('num_train_epochs')}), "
        f"lr {hp.get('learning_rate')}",
        f"  memory    ~{(mem.get('peak_bytes') or 0) * gib:.1f} GiB of "
        f"{(dev.get('free_bytes') or 0) * gib:.1f} GiB free: "
        + ("fits" if est.get("fits") else "DOES NOT FIT"),
        f"  time      ~{t.get('train_seconds', 0) / 60:.1f} min of training at "
        f"~{t.get('tokens_per_s', 0):,.0f} tokens/s",
        f"            ({t.get('basis')})",
    ]
    for c in est.get("chosen") or []:
        lines.append(f"  chosen    {c['setting']}={c['value']}: {c['why']}")
    return "\n".join(lines)
