"""Rich rendering for the CLI and the demo: tables, the training progress bar, job watching."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
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


def eval_table(run: dict) -> Table:
    """Base vs tuned: one row per target, the task metrics and the general suite."""
    report = run.get("report") or {}
    targets = report.get("targets") or []
    fields: list[str] = []
    for t in targets:
        for k in (t.get("metrics") or {}).get("fields") or {}:
            if k not in fields:
                fields.append(k)
    table = Table(title=f"eval {run.get('id')} ({report.get('n_examples', '?')} held-out examples, "
                        f"primary metric {(report.get('task') or {}).get('primary_metric', '?')})",
                  header_style="bold")
    cols = ["target", "model", "task score", "json valid"] + fields + ["rougeL", "general", "p50 ms",
                                                                        "tok/s", "errors"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("target", "model") else "right")
    for t in targets:
        m = t.get("metrics") or {}
        row = [t.get("name", "?"), t.get("model", "?"), _val(m.get("task_score")), _val(m.get("json_valid"))]
        row += [_val((m.get("fields") or {}).get(k)) for k in fields]
        row += [_val(m.get("rougeL")), _val(m.get("general")),
                fmt((m.get("latency_ms") or {}).get("p50"), 4), fmt(m.get("tokens_per_s"), 3),
                f"{m.get('errors', 0)}/{m.get('generations', '?')}"]
        table.add_row(*row)
    return table


def comparison_lines(run: dict) -> list[str]:
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
        lines.append(line)
    return lines + list(report.get("advice") or [])
