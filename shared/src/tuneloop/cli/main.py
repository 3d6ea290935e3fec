"""``tuneloop`` commands (typer + rich). Every command is a thin call of :class:`GatewayAPI`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from .api import GatewayAPI
from .common import _call, _clean, _json, api, console, err_console, out, state
from .flywheel import canary_app, captures_app
from .render import (
    estimate_lines,
    DATASET_COLUMNS,
    JOB_COLUMNS,
    JobWatcher,
    comparison_lines,
    dataset_table,
    eval_table,
    job_table,
    kv_table,
    list_table,
    print_decision,
    when,
)

app = typer.Typer(name="tuneloop", no_args_is_help=True, add_completion=False,
                  help="tuneloop: JSONL examples -> a fine-tuned LLM behind an OpenAI-compatible API.")
datasets_app = typer.Typer(no_args_is_help=True, help="Upload and inspect dataset versions.")
jobs_app = typer.Typer(no_args_is_help=True, help="Training jobs (LoRA; unsloth or peft).")
models_app = typer.Typer(no_args_is_help=True, help="Served models, model versions, promotion.")
evals_app = typer.Typer(no_args_is_help=True, help="Evaluate models against each other.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (admin or inference scope).")
for sub, name in ((datasets_app, "datasets"), (jobs_app, "jobs"), (models_app, "models"),
                  (evals_app, "evals"), (keys_app, "keys"), (captures_app, "captures"),
                  (canary_app, "canary")):
    app.add_typer(sub, name=name)


@app.callback()
def _global(
    url: Annotated[Optional[str], typer.Option("--url", envvar="TUNELOOP_URL",
                                               help="Gateway URL.")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="TUNELOOP_API_KEY",
                                                   help="Bearer key (default: var/gateway-admin-key).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON instead of tables.")] = False,
) -> None:
    state.url, state.api_key, state.as_json = url, api_key, as_json


# -- datasets ----------------------------------------------------------------------------------
@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="JSONL file (instruction/input/output or messages).")],
    eval_file: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False,
                                                      help="Explicit held-out JSONL.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Display name.")] = None,
    on_invalid: Annotated[str, typer.Option(help="reject | skip invalid lines.")] = "reject",
    eval_size: Annotated[Optional[int], typer.Option(help="Held-out rows.")] = None,
    eval_fraction: Annotated[Optional[float], typer.Option(help="Held-out fraction.")] = None,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 42,
    max_seq_length: Annotated[Optional[int], typer.Option(help="Truncation limit for the report.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Model folder for token stats.")] = None,
    replay_rows: Annotated[int, typer.Option(help="Add this many replay rows against forgetting: "
                                             "the served base model's own answers to general prompts "
                                             "(train split only).")] = 0,
    replay_model: Annotated[Optional[str], typer.Option(help="Served model answering the replay "
                                                        "prompts (default: the base).")] = None,
) -> None:
    """Upload a JSONL file (progress bar), then print the version and its report summary."""
    opts = {"name": name, "on_invalid": on_invalid, "eval_size": eval_size,
            "eval_fraction": eval_fraction, "seed": seed, "max_seq_length": max_seq_length,
            "tokenizer": tokenizer}
    total = file.stat().st_size + (eval_file.stat().st_size if eval_file else 0)
    with api() as c:
        replay = None
        if replay_rows > 0:
            with err_console.status(f"replay rows: asking the base {replay_rows} general questions..."):
                made = _call(c.replay_rows, replay_rows, model=replay_model, seed=seed)
            replay = made.get("data") or []
            err_console.print(f"replay: {len(replay)} rows ({len(made.get('dropped') or [])} dropped)")
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=err_console, transient=True) as bar:
            task = bar.add_task(f"upload {file.name}", total=total)
            ds = _call(c.upload_dataset, file, eval_file=eval_file, options=opts,
                       on_progress=lambda n: bar.advance(task, n), replay_rows=replay)
        if state.as_json:
            return out(ds)
        console.print(dataset_table(ds))
        text = _call(c.report_text, ds["id"])
        console.print(text)


@datasets_app.command("list")
def datasets_list() -> None:
    """Dataset versions, newest first."""
    with api() as c:
        data = _call(c.list_datasets)
    out(data, list_table("datasets", data.get("data", []), DATASET_COLUMNS))


@datasets_app.command("show")
def datasets_show(dataset_id: str) -> None:
    """One dataset version: counts, warnings, who uses it."""
    with api() as c:
        ds = _call(c.dataset, dataset_id)
    out(ds, dataset_table(ds))


@datasets_app.command("report")
def datasets_report(dataset_id: str) -> None:
    """The quality report: errors by line, duplicates, leakage, token lengths, template preview."""
    with api() as c:
        if state.as_json:
            return out(_call(c.report, dataset_id))
        console.print(_call(c.report_text, dataset_id))


# -- jobs --------------------------------------------------------------------------------------
def _parse_hp(pairs: list[str]) -> dict[str, Any]:
    hp: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--hp")
        k, v = pair.split("=", 1)
        try:
            hp[k.strip()] = json.loads(v)
        except ValueError:
            hp[k.strip()] = v
    return hp


def _base_model(spec: str | None) -> str:
    """A Hub id or folder as given; none/'default' -> the embedded base prepared in the store."""
    if spec and spec != "default":
        return spec
    from ..basemodel import DEFAULT_BASE_NAME, default_store_url, is_valid

    folder = Path(default_store_url()) / "base" / DEFAULT_BASE_NAME
    if not is_valid(folder):
        raise typer.BadParameter(f"the embedded base is not prepared at {folder}: run "
                                 "`python -m tuneloop.basemodel`, or give a Hub id or folder",
                                 param_hint="--base-model")
    return str(folder)


@jobs_app.command("create")
def jobs_create(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset version id (ds-...).")],
    base_model: Annotated[Optional[str], typer.Option(help="Base model: Hub id, local path or "
                                                      "'default' (SmolLM2-135M-Instruct).")] = None,
    backend: Annotated[str, typer.Option(help="auto | unsloth | peft")] = "auto",
    epochs: Annotated[Optional[float], typer.Option(help="num_train_epochs")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning_rate")] = None,
    max_seq_length: Annotated[Optional[int], typer.Option(help="max_seq_length")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="per_device_train_batch_size")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="gradient_accumulation_steps")] = None,
    hp: Annotated[Optional[list[str]], typer.Option("--hp", help="Any hyperparameter, key=value "
                                                     "(repeatable), e.g. --hp lora_r=32")] = None,
    gguf: Annotated[Optional[list[str]], typer.Option(help="GGUF export (repeatable): q8_0, q4_k_m...")] = None,
    suffix: Annotated[Optional[str], typer.Option(help="Name suffix of the model version.")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow progress until done.")] = False,
    gate_alias: Annotated[Optional[str], typer.Option(help="Alias the gate moves if the model "
                                                      "passes (default: the gateway's).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Estimate only: rows, tokens, chosen "
                                          "settings, steps, memory, time; starts nothing.")] = False,
) -> None:
    """Start a LoRA training job (or estimate it with --dry-run)."""
    hps = _parse_hp(hp or [])
    for key, val in (("num_train_epochs", epochs), ("learning_rate", lr),
                     ("max_seq_length", max_seq_length), ("per_device_train_batch_size", batch_size),
                     ("gradient_accumulation_steps", grad_accum)):
        if val is not None:
            hps[key] = val
    body: dict[str, Any] = {"dataset_id": dataset, "backend": backend, "hyperparameters": hps,
                            "base_model": _base_model(base_model)}
    if gguf:
        body["export"] = {"merged": True, "gguf": gguf}
    if suffix:
        body["suffix"] = suffix
    if gate_alias:
        body["gate_alias"] = gate_alias
    with api() as c:
        if dry_run:
            est = _call(c.create_job, {**body, "dry_run": True})
            return out(est, estimate_lines(est))
        job = _call(c.create_job, body)
        if not watch:
            return out(job, job_table(job))
        console.print(f"job [bold]{job['id']}[/] {job.get('status')}")
        _watch(c, job["id"])


def _watch(c: GatewayAPI, job_id: str, use_sse: bool = True) -> dict:
    job = _call(JobWatcher(c, console).watch, job_id, use_sse=use_sse)
    color = {"succeeded": "green", "failed": "red"}.get(job.get("status"), "yellow")
    console.print(f"job {job_id}: [{color}]{job.get('status')}[/]"
                  + (f", model {job['model_id']}" if job.get("model_id") else ""))
    if job.get("error"):
        console.print(f"[red]{job['error'].get('code')}[/]: {job['error'].get('message')}")
    if job.get("status") != "succeeded":
        raise typer.Exit(1)
    return job


@jobs_app.command("list")
def jobs_list() -> None:
    """Training jobs, newest first."""
    with api() as c:
        data = _call(c.list_jobs)
    out(data, list_table("jobs", data.get("data", []), JOB_COLUMNS))


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """One job: status, progress, hyperparameters, error."""
    with api() as c:
        job = _call(c.job, job_id)
    out(job, job_table(job))


@jobs_app.command("watch")
def jobs_watch(job_id: str,
               poll: Annotated[bool, typer.Option("--poll", help="Poll events instead of SSE.")] = False) -> None:
    """Live progress: step, loss, eval loss, tokens/s, ETA (SSE, or polling)."""
    with api() as c:
        _watch(c, job_id, use_sse=not poll)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    with api() as c:
        job = _call(c.cancel_job, job_id)
    out(job, job_table(job))


# -- models ------------------------------------------------------------------------------------
@models_app.command("list")
def models_list() -> None:
    """Served models and aliases (what OpenAI clients can call)."""
    with api() as c:
        data = _call(c.served_models)
    cols = [("id", lambda m: m.get("id")), ("owned by", lambda m: m.get("owned_by")),
            ("alias of", lambda m: m.get("alias_of") or m.get("root") or "-"),
            ("created", lambda m: when(m.get("created")))]
    out(data, list_table("served models", data.get("data", []), cols))


@models_app.command("show")
def models_show(model_id: str) -> None:
    """A model version's lineage (mv-...: dataset, config, metrics, exports, promotions) or a served model."""
    with api() as c:
        mv = _call(c.model, model_id)
    if state.as_json or not str(model_id).startswith("mv-"):
        return out(mv)
    arts = mv.get("artifacts") or {}
    pairs = [(k, mv.get(k)) for k in ("id", "job_id", "dataset_id", "base_model", "base_revision")]
    pairs += [(f"metric {k}", v) for k, v in (mv.get("metrics") or {}).items()]
    pairs += [(f"artifact {k}", v.get("key") if isinstance(v, dict) else v) for k, v in arts.items()]
    pairs += [(f"check {ch.get('kind')}", f"{'passed' if ch.get('passed') else 'FAILED'} {ch.get('detail') or ''}")
              for ch in mv.get("export_checks") or []]
    pairs += [(f"promotion {p.get('id')}", f"{p.get('decision') or p.get('action')} "
               f"{p.get('alias') or ''} {p.get('reason') or ''}") for p in mv.get("promotions") or []]
    console.print(kv_table(f"model version {model_id}", pairs))


@models_app.command("promote")
def models_promote(
    model: Annotated[str, typer.Argument(help="A model version (mv-...) or a served model name.")],
    alias: Annotated[Optional[str], typer.Option(help="Alias to move (default: the gateway's).")] = None,
    note: Annotated[Optional[str], typer.Option(help="Why (recorded with the decision).")] = None,
) -> None:
    """Manual promotion: point the alias at this model (deploys a model version first)."""
    kw = {"model_id": model} if model.startswith("mv-") else {"model": model}
    with api() as c:
        res = _call(c.promote, alias=alias, note=note, **kw)
    out(res, kv_table("promotion", list(res.items())))


@models_app.command("gate")
def models_gate(
    job_id: Annotated[str, typer.Argument(help="A succeeded training job (job-...).")],
    alias: Annotated[Optional[str], typer.Option(help="Alias to promote onto (default: the job's "
                                                 "gate_alias, else the gateway's).")] = None,
) -> None:
    """Run the promotion gate for a job now (again, when it was inconclusive) and show why."""
    with api() as c:
        res = _call(c.gate_job, job_id, alias)
    if state.as_json:
        return out(res)
    print_decision(console, res)


@models_app.command("rollback")
def models_rollback(
    alias: Annotated[Optional[str], typer.Argument(help="Alias (default: the gateway's).")] = None,
    note: Annotated[Optional[str], typer.Option(help="Why.")] = None,
) -> None:
    """Move the alias back to the model it pointed at before."""
    with api() as c:
        res = _call(c.rollback, alias, note)
    out(res, kv_table("rollback", list(res.items())))


# -- evals -------------------------------------------------------------------------------------
def _target(spec: str) -> dict[str, Any]:
    """``name=model[@base_url]`` -> a target."""
    if "=" not in spec:
        raise typer.BadParameter(f"expected name=model[@base_url], got {spec!r}", param_hint="--target")
    name, model = spec.split("=", 1)
    t: dict[str, Any] = {"name": name}
    if "@" in model and model.split("@", 1)[1].startswith("http"):
        model, t["base_url"] = model.split("@", 1)
    t["model"] = model
    return t


@evals_app.command("run")
def evals_run(
    target: Annotated[list[str], typer.Option("--target", "-t", help="name=model[@base_url]; "
                                              "first is the baseline (repeat, 2 or more).")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Use its eval split.")] = None,
    file: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Eval JSONL.")] = None,
    max_examples: Annotated[Optional[int], typer.Option(help="Cap on eval rows.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Generation cap per answer.")] = None,
    general_suite: Annotated[Optional[bool], typer.Option("--general/--no-general",
                                                          help="Run the general-capability suite.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the report.")] = True,
) -> None:
    """Evaluate two or more targets on held-out data; prints the comparison table."""
    if (dataset is None) == (file is None):
        raise typer.BadParameter("give exactly one of --dataset or --file")
    body: dict[str, Any] = {"targets": [_target(t) for t in target], "max_examples": max_examples,
                            "max_tokens": max_tokens, "general_suite": general_suite}
    if dataset:
        body["dataset_id"] = dataset
    else:
        assert file is not None  # checked above: --dataset or --file
        body["rows"] = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    body = {k: v for k, v in body.items() if v is not None}
    with api() as c:
        run = _call(c.create_eval, body)
        if wait and run.get("status") in ("queued", "running", "pending"):
            with console.status(f"eval {run['id']} running..."):
                run = _call(c.wait_eval, run["id"])
    _print_eval(run)


def _print_eval(run: dict) -> None:
    if state.as_json:
        return out(run)
    if not run.get("report"):
        console.print(kv_table(f"eval {run.get('id')}", [("status", run.get("status")),
                                                          ("error", run.get("error"))]))
        return
    console.print(eval_table(run))
    for line in comparison_lines(run):
        console.print(f"  {line}")


@evals_app.command("show")
def evals_show(eval_id: str) -> None:
    """An eval run's report: per-target metrics, uplift with CIs, advice."""
    with api() as c:
        _print_eval(_call(c.eval, eval_id))


# -- keys --------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Label.")] = "cli",
    scope: Annotated[list[str], typer.Option("--scope", help="inference | admin (repeatable).")]
    = ["inference"],  # noqa: B006 - typer reads this default and never mutates it
    rate_limit_rpm: Annotated[Optional[int], typer.Option(help="Requests per minute.")] = None,
) -> None:
    """Create an API key; it is printed once."""
    with api() as c:
        res = _call(c.create_key, name, scope, rate_limit_rpm)
    out(res, kv_table("api key (shown once)", list(res.items())))


@keys_app.command("bind")
def keys_bind(
    key_id: str,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="Alias/served name the key may call (repeatable).")] = None,
    unbind: Annotated[bool, typer.Option(help="Any model again.")] = False,
    capture: Annotated[Optional[bool], typer.Option(
        "--capture/--no-capture", help="Opt the key in to (out of) traffic capture.")] = None,
) -> None:
    """Bind a key to aliases (per-tenant: it may call only those) and/or set its capture opt-in."""
    body = _clean(models=model or None, unbind=unbind or None, capture=capture)
    with api() as c:
        res = _call(_json, c, "PATCH", f"/v1/keys/{key_id}", body)
    out(res, kv_table(f"api key {key_id}", list(res.items())))


# -- local stack -------------------------------------------------------------------------------
def _var(var: Optional[Path]) -> Path:
    return var or Path(os.environ.get("TUNELOOP_DATA_DIR", "var"))


VarOpt = Annotated[Optional[Path], typer.Option("--var", help="State folder (TUNELOOP_DATA_DIR).")]


@app.command("up")
def up(services: Annotated[Optional[list[str]], typer.Argument(help="Only these services.")] = None,
       var: VarOpt = None) -> None:
    """Start the four services locally (SQLite, local artifacts, CPU engine)."""
    from .. import stack

    raise typer.Exit(stack.up(_var(var), services or None))


@app.command("down")
def down(var: VarOpt = None) -> None:
    """Stop the local services."""
    from .. import stack

    raise typer.Exit(stack.down(_var(var)))


@app.command("status")
def status(var: VarOpt = None) -> None:
    """Which local services run, and whether the gateway answers."""
    from .. import stack

    code = stack.status(_var(var))
    with api() as c:
        ok = c.health()
    console.print(f"gateway {c.url}: {'[green]healthy[/]' if ok else '[red]not answering[/]'}")
    raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
