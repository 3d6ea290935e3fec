"""Every bad request gets a precise 4xx in the error envelope before any training starts
(the trainer app in-process with its lifespan, the dataset service as a real process)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneloop_trainer.app import create_app
from tuneloop_trainer.settings import TrainerSettings
from trainer_testlib import FAST_HP, Stack


@pytest.fixture
def client(stack: Stack, tmp_path: Path, database_url: str | None) -> Iterator[TestClient]:
    """The trainer app on both metadata backends (SQLite default, real PostgreSQL)."""
    s = TrainerSettings(data_dir=tmp_path / "var", artifact_url=str(stack.artifacts),
                        dataset_url=stack.dataset.url, log_json=False, log_level="WARNING",
                        database_url=database_url)
    with TestClient(create_app(s)) as c:
        yield c


def _err(resp, status: int, code: str, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def _job(base: Path | str, dataset_id: str, **kw) -> dict:
    return {"dataset_id": dataset_id, "base_model": str(base), "backend": "peft",
            "hyperparameters": FAST_HP, **kw}


def test_dataset_checks(client: TestClient, tiny_random_dir: Path, small_dataset: str):
    _err(client.post("/v1/jobs", json=_job(tiny_random_dir, "ds-0123456789abcdef")), 404,
         "dataset_not_found", "dataset_id")
    _err(client.post("/v1/jobs", json=_job(tiny_random_dir, "../../etc")), 404, "dataset_not_found")
    assert client.get("/v1/jobs").json()["data"] == []  # nothing was queued


def test_base_model_checks(client: TestClient, tiny_random_dir: Path, small_dataset: str,
                           tmp_path: Path):
    _err(client.post("/v1/jobs", json=_job(tmp_path / "nope", small_dataset)), 422,
         "base_model_not_found", "base_model")
    empty = tmp_path / "empty"
    empty.mkdir()
    _err(client.post("/v1/jobs", json=_job(f"./{empty.relative_to(Path.cwd())}" if empty.is_relative_to(Path.cwd())
                                           else empty, small_dataset)), 422, "base_model_not_loadable")
    _err(client.post("/v1/jobs", json=_job("some-org/not-cached-model", small_dataset)), 422,
         "base_model_not_loadable")
    no_tpl = tmp_path / "no-template"
    shutil.copytree(tiny_random_dir, no_tpl)
    (no_tpl / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((no_tpl / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (no_tpl / "tokenizer_config.json").write_text(json.dumps(cfg))
    _err(client.post("/v1/jobs", json=_job(no_tpl, small_dataset)), 422,
         "base_model_no_chat_template")
    hp = {**FAST_HP, "max_seq_length": 4096}  # tiny model: 2048 positions
    _err(client.post("/v1/jobs", json=_job(tiny_random_dir, small_dataset, hyperparameters=hp)), 422,
         "max_seq_length_too_long", "hyperparameters.max_seq_length")


@pytest.mark.parametrize("patch,param", [
    ({"hyperparameters": {"learning_rate": 3.0}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"lora_r": 0}}, "hyperparameters.lora_r"),
    ({"hyperparameters": {"num_train_epochs": -1}}, "hyperparameters.num_train_epochs"),
    ({"hyperparameters": {"per_device_train_batch_size": 100000}}, "hyperparameters.per_device_train_batch_size"),
    ({"hyperparameters": {"eval_strategy": "steps"}}, "hyperparameters"),
    ({"hyperparameters": {"lr": 1e-4}}, "hyperparameters.lr"),
    ({"backend": "deepspeed"}, "backend"),
    ({"export": {"gguf": ["q2_k"]}}, "export.gguf.0"),
    ({"callback_url": "file:///etc/passwd"}, "callback_url"),
    ({"suffix": "../x"}, "suffix"),
    ({"gate_alias": "bad alias!"}, "gate_alias"),
    ({"gate_alias": "-x"}, "gate_alias"),
    ({"extra": 1}, "extra"),
])
def test_bad_fields_are_400(client: TestClient, tiny_random_dir: Path, patch: dict, param: str):
    body = {**_job(tiny_random_dir, "ds-0123456789abcdef"), **patch}
    err = _err(client.post("/v1/jobs", json=body), 400, "invalid_request")
    assert err["param"] == param


def test_unknown_ids_are_404(client: TestClient):
    for path in ("/v1/jobs/job-0123456789abcdef", "/v1/jobs/nope", "/v1/jobs/job-0123456789abcdef/events",
                 "/v1/fine_tuning/jobs/job-0123456789abcdef", "/v1/files/file-0123456789abcdef"):
        assert client.get(path).status_code == 404, path
    _err(client.get("/v1/models/mv-0123456789abcdef"), 404, "model_not_found")
    _err(client.post("/v1/jobs/job-0123456789abcdef/cancel"), 404, "job_not_found")
    _err(client.get("/v1/jobs", params={"status": "exploded"}), 400, "invalid_request")


def test_openai_surface_bad_input(client: TestClient, tiny_random_dir: Path):
    _err(client.post("/v1/files", files={"file": ("t.jsonl", b'{"a": 1}\n')}, data={"purpose": "batch"}),
         400, "unsupported_purpose", "purpose")
    _err(client.post("/v1/files", data={"purpose": "fine-tune"}), 400, "file_required")
    _err(client.post("/v1/files", files={"file": ("t.jsonl", b"")}, data={"purpose": "fine-tune"}),
         400, "file_empty")
    bad = client.post("/v1/files", files={"file": ("t.jsonl", b'{"instruction": "x"}\nnot json\n')},
                      data={"purpose": "fine-tune"})
    err = _err(bad, 422, "dataset_invalid")  # the dataset service's verdict, with line numbers
    assert err["details"]["errors"][0]["line"] >= 1
    assert client.get("/v1/files").json()["data"] == []
    _err(client.post("/v1/fine_tuning/jobs", json={"model": str(tiny_random_dir),
                                                   "training_file": "file-0123456789abcdef"}),
         404, "file_not_found")
    _err(client.post("/v1/fine_tuning/jobs", json={"model": "m", "training_file": "file-0123456789abcdef",
                                                   "method": {"type": "dpo"}}), 400, "unsupported_method")
    _err(client.post("/v1/fine_tuning/jobs", json={"model": "m"}), 400, "invalid_request", "training_file")


def test_gate_alias_is_validated_and_kept_on_the_openai_surface(client: TestClient, tiny_random_dir: Path,
                                                               ticket_rows: list[dict[str, str]]):
    """A job names the alias its gate moves (the gateway's alias is only the default)."""
    lines = "\n".join(json.dumps(r) for r in ticket_rows[:40]).encode()
    f = client.post("/v1/files", files={"file": ("t.jsonl", lines)}, data={"purpose": "fine-tune"})
    assert f.status_code == 200, f.text
    body = {"model": str(tiny_random_dir), "training_file": f.json()["id"],
            "hyperparameters": {"n_epochs": 1}, "tuneloop": {"backend": "peft", "gate_alias": "no spaces"}}
    _err(client.post("/v1/fine_tuning/jobs", json=body), 400, "invalid_request", "tuneloop.gate_alias")
    body["tuneloop"]["gate_alias"] = "invoice-extractor"
    r = client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code in (200, 201), r.text
    job_id = r.json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")  # only its record matters here
    assert client.get(f"/v1/jobs/{job_id}").json()["gate_alias"] == "invoice-extractor"
