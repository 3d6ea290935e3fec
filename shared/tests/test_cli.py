"""The ``tuneloop`` CLI against real service processes (dataset service, gateway in front of it).

No mocks: the CLI runs in-process through typer's CliRunner and talks HTTP to real FastAPI
processes on real ports with real SQLite and a real artifact store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.cli.api import ApiError, GatewayAPI
from tuneloop.examples.support_tickets import write_jsonl
from tuneloop.testing import ServiceProcess, free_port

ADMIN_KEY = "tl-test-admin-key-0123456789"
runner = CliRunner()


def invoke(url: str, *args: str, key: str | None = None):
    env = {"TUNELOOP_URL": url, "TUNELOOP_API_KEY": key or "", "COLUMNS": "200",
           "TUNELOOP_DATA_DIR": "/nonexistent-tuneloop-var"}
    return runner.invoke(app, list(args), env=env)


def _commands(group: object, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        yield path
        if getattr(cmd, "commands", None):
            yield from _commands(cmd, path)


ALL_COMMANDS = sorted(_commands(typer.main.get_command(app)))


def test_every_issue_command_exists():
    wanted = {("datasets", c) for c in ("upload", "list", "show", "report")} | \
        {("jobs", c) for c in ("create", "list", "show", "watch", "cancel")} | \
        {("models", c) for c in ("list", "show", "promote", "rollback")} | \
        {("evals", "run"), ("evals", "show"), ("keys", "create"), ("up",), ("down",), ("status",)}
    assert wanted <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", [(), *ALL_COMMANDS], ids=lambda p: " ".join(p) or "tuneloop")
def test_help(path: tuple[str, ...]):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert f"tuneloop {' '.join(path)}".strip() in " ".join(result.output.split())


def test_unreachable_gateway_is_a_clean_error():
    result = invoke(f"http://127.0.0.1:{free_port()}", "datasets", "list", key="x")
    assert result.exit_code == 1
    assert "cannot reach" in result.output and "Traceback" not in result.output


def test_bad_arguments_are_usage_errors(tmp_path: Path):
    result = invoke("http://127.0.0.1:1", "jobs", "create", "--dataset", "ds-1", "--hp", "nokeyvalue")
    assert result.exit_code == 2 and "key=value" in result.output
    result = invoke("http://127.0.0.1:1", "jobs", "create", "--dataset", "ds-1")
    assert result.exit_code == 2 and "embedded base is not prepared" in " ".join(result.output.split())
    result = invoke("http://127.0.0.1:1", "evals", "run", "--target", "base=base")
    assert result.exit_code == 2 and "--dataset or --file" in result.output
    result = invoke("http://127.0.0.1:1", "datasets", "upload", str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2


# -- against the real dataset service --------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    data = tmp_path_factory.mktemp("cli-dataset")
    env = {"DATASET_DATA_DIR": str(data / "var"), "HF_HUB_OFFLINE": "1"}
    with ServiceProcess("tuneloop_dataset", env=env, log_path=data / "dataset.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-data") / "tickets.jsonl"
    write_jsonl(str(path), 240, seed=5)
    return path


def _ds_id(text: str) -> str:
    found = re.findall(r"ds-[0-9a-f]{16}", text)
    assert found, text
    return found[0]


def test_datasets_flow_against_dataset_service(dataset_service: ServiceProcess, tickets: Path):
    url = dataset_service.url
    up = invoke(url, "datasets", "upload", str(tickets), "--name", "cli-tickets", "--eval-size", "40")
    assert up.exit_code == 0, up.output
    ds_id = _ds_id(up.output)
    assert "cli-tickets" in up.output
    assert "rows train" in up.output and "200" in up.output  # 240 rows, 40 held out

    shown = invoke(url, "--json", "datasets", "show", ds_id)
    assert shown.exit_code == 0, shown.output
    ds = json.loads(shown.output)
    assert ds["id"] == ds_id and ds["counts"]["train"] == 200 and ds["counts"]["eval"] == 40

    listed = invoke(url, "datasets", "list")
    assert listed.exit_code == 0 and ds_id in listed.output

    report = invoke(url, "datasets", "report", ds_id)
    assert report.exit_code == 0 and report.output.strip()
    report_json = invoke(url, "--json", "datasets", "report", ds_id)
    assert report_json.exit_code == 0
    assert isinstance(json.loads(report_json.output), dict)

    again = invoke(url, "--json", "datasets", "upload", str(tickets), "--eval-size", "40")
    assert again.exit_code == 0 and json.loads(again.output)["id"] == ds_id  # content-hashed


def test_rejected_upload_prints_line_errors(dataset_service: ServiceProcess, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\nnot json\n{"instruction": "c"}\n')
    result = invoke(dataset_service.url, "datasets", "upload", str(bad))
    assert result.exit_code == 1
    assert "dataset_invalid" in result.output
    assert "line 2" in result.output and "line 3" in result.output
    assert "Traceback" not in result.output


def test_unknown_dataset_is_404_envelope(dataset_service: ServiceProcess):
    result = invoke(dataset_service.url, "datasets", "show", "ds-0000000000000000")
    assert result.exit_code == 1
    assert "HTTP 404" in result.output


def test_upload_progress_reader_counts_every_byte(dataset_service: ServiceProcess, tickets: Path):
    seen: list[int] = []
    with GatewayAPI(dataset_service.url, "") as api:
        ds = api.upload_dataset(tickets, options={"eval_size": 40}, on_progress=seen.append)
    assert sum(seen) == tickets.stat().st_size
    assert ds["counts"]["total"] == 240


def test_the_sync_client_takes_calls_from_many_threads_at_once(dataset_service: ServiceProcess,
                                                               tickets: Path):
    """The demo asks the base model its replay prompts from 64 threads through one GatewayAPI.
    With an asyncio.Runner driven by the caller every call but the first running one failed
    with "This event loop is already running" (599 of 600 replay rows dropped on the H200)."""
    from concurrent.futures import ThreadPoolExecutor

    with GatewayAPI(dataset_service.url, "") as api:
        ds = api.upload_dataset(tickets, options={"eval_size": 40})
        with ThreadPoolExecutor(max_workers=32) as pool:
            got = list(pool.map(lambda _i: api.get(f"/v1/datasets/{ds['id']}")["id"], range(96)))
    assert got == [ds["id"]] * 96


# -- through the real gateway (auth, keys, proxying, clean upstream errors) -------------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            dataset_service: ServiceProcess) -> Iterator[ServiceProcess]:
    data = tmp_path_factory.mktemp("cli-gateway")
    env = {"TUNELOOP_DATA_DIR": str(data), "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
           "GATEWAY_DATASET_URL": dataset_service.url,
           # nothing listens there: trainer and inference calls must fail cleanly
           "GATEWAY_TRAINER_URL": f"http://127.0.0.1:{free_port()}",
           "GATEWAY_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",
           "GATEWAY_RECONCILE_INTERVAL_S": "0"}
    with ServiceProcess("tuneloop_gateway", env=env, log_path=data / "gateway.log") as proc:
        yield proc


def test_keys_and_scopes_through_gateway(gateway: ServiceProcess, tickets: Path):
    url = gateway.url
    created = invoke(url, "--json", "keys", "create", "--name", "ci", "--scope", "inference", key=ADMIN_KEY)
    assert created.exit_code == 0, created.output
    inference_key = json.loads(created.output)["key"]
    assert inference_key and inference_key != ADMIN_KEY

    denied = invoke(url, "datasets", "list", key=inference_key)
    assert denied.exit_code == 1 and "HTTP 403" in denied.output
    wrong = invoke(url, "datasets", "list", key="not-a-key")
    assert wrong.exit_code == 1 and "HTTP 401" in wrong.output

    up = invoke(url, "datasets", "upload", str(tickets), "--eval-size", "40", key=ADMIN_KEY)
    assert up.exit_code == 0, up.output
    ds_id = _ds_id(up.output)
    shown = invoke(url, "--json", "datasets", "show", ds_id, key=ADMIN_KEY)
    assert json.loads(shown.output)["counts"]["eval"] == 40


def test_missing_upstreams_are_clean_errors(gateway: ServiceProcess):
    for args in (("jobs", "list"), ("jobs", "show", "job-0000000000000000"), ("models", "list")):
        result = invoke(gateway.url, *args, key=ADMIN_KEY)
        assert result.exit_code == 1, (args, result.output)
        assert re.search(r"HTTP 50[234]", result.output), (args, result.output)
        assert "Traceback" not in result.output


def test_eval_validation_error_is_a_clean_4xx(gateway: ServiceProcess):
    with GatewayAPI(gateway.url, ADMIN_KEY) as api, pytest.raises(ApiError) as err:
        api.create_eval({"targets": [{"name": "a", "model": "m"}, {"name": "a", "model": "m"}],
                         "rows": [{"instruction": "x", "output": "y"}]})
    assert err.value.status == 400 and "unique" in err.value.message


# -- jobs against a real trainer process (a tiny local model trains for a few steps) ---------------
@pytest.fixture(scope="module")
def trainer_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    root = tmp_path_factory.mktemp("cli-trainer")
    art = root / "artifacts"
    common = {"TUNELOOP_ARTIFACT_URL": str(art), "HF_HUB_OFFLINE": "1"}
    with ServiceProcess("tuneloop_dataset", env={**common, "DATASET_DATA_DIR": str(root / "dataset")},
                        log_path=root / "dataset.log") as ds:
        env = {**common, "TRAINER_DATA_DIR": str(root / "trainer"), "TRAINER_DATASET_URL": ds.url,
               "TRAINER_POLL_INTERVAL_S": "0.3"}
        with ServiceProcess("tuneloop_trainer", env=env, log_path=root / "trainer.log",
                            startup_timeout=120) as tr:
            yield ds, tr


@pytest.mark.slow
def test_jobs_create_watch_show_against_real_trainer(trainer_stack, tiny_random_dir: Path, tmp_path: Path):
    ds, tr = trainer_stack
    data = tmp_path / "tickets.jsonl"
    write_jsonl(str(data), 40, seed=9)
    up = invoke(ds.url, "--json", "datasets", "upload", str(data), "--eval-size", "8")
    assert up.exit_code == 0, up.output
    ds_id = json.loads(up.output)["id"]

    created = invoke(tr.url, "jobs", "create", "--dataset", ds_id, "--base-model", str(tiny_random_dir),
                     "--backend", "peft", "--epochs", "1", "--lr", "0.002", "--batch-size", "8",
                     "--max-seq-length", "128", "--hp", "logging_steps=1", "--hp", "warmup_steps=1",
                     "--watch")
    assert created.exit_code == 0, created.output
    assert "succeeded" in created.output
    job_id = re.findall(r"job-[0-9a-f]{16}", created.output)[0]
    model_id = re.findall(r"mv-[0-9a-f]{16}", created.output)[0]
    flat = " ".join(created.output.split())
    # the bar was driven by the job's real events: train loss and eval loss numbers, then done
    assert re.search(r"loss \d+\.\d+ \| eval \d+\.\d+", flat), flat
    assert "warning: only 32 training rows" in flat  # the trainer's warning event is shown

    shown = invoke(tr.url, "--json", "jobs", "show", job_id)
    job = json.loads(shown.output)
    assert job["status"] == "succeeded" and job["model_id"] == model_id
    assert job["hyperparameters"]["learning_rate"] == 0.002 and job["hyperparameters"]["logging_steps"] == 1

    watched = invoke(tr.url, "jobs", "watch", job_id, "--poll")  # finished: returns at once
    assert watched.exit_code == 0 and "succeeded" in watched.output
    listed = invoke(tr.url, "jobs", "list")
    assert listed.exit_code == 0 and job_id in listed.output
    lineage = invoke(tr.url, "models", "show", model_id)
    assert lineage.exit_code == 0 and ds_id in lineage.output and "merged" in lineage.output

    cancelled = invoke(tr.url, "jobs", "cancel", job_id)  # already finished: a clean 409
    assert cancelled.exit_code == 1 and "HTTP 409" in cancelled.output


def _eval_run() -> dict:
    def m(score: float) -> dict:
        ci = {"value": score, "ci_low": score - 0.05, "ci_high": score + 0.05, "n": 120}
        return {"task_score": ci, "json_valid": ci, "fields": {"summary": ci, "urgency": ci, "category": ci},
                "rougeL": ci, "general": ci, "latency_ms": {"p50": 6712.4}, "tokens_per_s": 12.34,
                "errors": 0, "generations": 558}
    targets = [{"name": "base", "role": "base", "model": "base", "metrics": m(0.0)},
               {"name": "base_3shot", "role": "base_kshot", "shots": 3, "model": "base", "metrics": m(0.358)},
               {"name": "candidate", "role": "candidate", "model": "mv-0123456789abcdef", "metrics": m(0.812)},
               {"name": "production", "role": "production", "model": "mv-fedcba9876543210", "metrics": m(0.771)}]
    return {"id": "eval-0123456789abcdef", "status": "succeeded", "report": {
        "n_examples": 120, "task": {"kind": "json", "primary_metric": "json_fields"}, "targets": targets,
        "comparisons": [{"target": "candidate", "vs": "base_3shot",
                         "uplift": {"value": 0.454, "ci_low": 0.4, "ci_high": 0.5}}],
        "failed_requests": [], "advice": ["Base 'base' scores 0.0% on the held-out set"]}}


def test_eval_table_reads_at_80_columns():
    from rich.console import Console

    from tuneloop.cli.render import comparison_lines, eval_table

    console = Console(width=80, record=True, color_system=None)
    console.print(eval_table(_eval_run()))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # no cell cut short
    for needed in ("0.812", "0.358", "0.771", "base_3shot", "3-shot", "production", "urgency", "6712"):
        assert needed in text, needed
    assert comparison_lines(_eval_run())[0].startswith("candidate vs base_3shot: uplift +0.454")


def test_gate_decision_says_in_words_when_an_alias_had_no_target():
    from rich.console import Console

    from tuneloop.cli.render import print_decision

    console = Console(width=80, record=True, color_system=None)
    print_decision(console, {"status": "rejected", "alias": "support-bot", "eval_id": "eval-1",
                             "reasons": ["refused: 'support-bot' had no target before and still has none"],
                             "evidence": {}})
    text = console.export_text()
    assert "None" not in text and "had no target before" in text and text.startswith("rejected")
