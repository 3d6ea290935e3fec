"""The job's steps alone, and a whole job, on a local folder store and on a real S3-compatible
server (moto): prepare data -> build trainer -> train -> export, every input and output through
the store API (a restarted job resumes from the checkpoints the object store holds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop import layout
from tuneloop.storage import ArtifactStore
from tuneloop_trainer import pipeline, run_job
from tuneloop_trainer.backends import get_backend
from tuneloop_trainer.checkpoints import Checkpoints
from tuneloop_trainer.events import EventWriter, read_store_events

from trainer_testlib import FAST_HP, article_to_chat

DS, JOB, MV = "ds-00000000000000p1", "job-00000000000000p1", "mv-00000000000000p1"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "artifacts"))
    return ArtifactStore(request.getfixturevalue("s3_artifact_url"),
                         **request.getfixturevalue("s3_storage_options"))


def _put_dataset(store: ArtifactStore, rows: list[dict], tmp: Path, n_eval: int = 4) -> str:
    from datasets import Dataset, DatasetDict

    chats = [article_to_chat(r) | {"line": i + 1} for i, r in enumerate(rows)]
    local = tmp / "ds-stage"
    DatasetDict({"train": Dataset.from_list(chats[:-n_eval]),
                 "eval": Dataset.from_list(chats[-n_eval:])}).save_to_disk(str(local))
    store.put_dir(local, layout.dataset_hf(DS))
    return layout.dataset_hf(DS)


def _job(store: ArtifactStore, tmp: Path, base: Path, key: str, **hp) -> pipeline.Job:
    spec = {"job_id": JOB, "model_id": MV, "dataset_key": key, "base_model": str(base),
            "backend": "peft", "hyperparameters": {**FAST_HP, **hp},
            "export": {"verify_prompts": 1, "verify_max_new_tokens": 4}}
    return pipeline.Job(spec, store, EventWriter(tmp / "events.jsonl"), tmp / "work")


def _ckpt(root: Path, step: int, best: str | None) -> None:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(bytes([step]) * 16)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step,
                                                      "best_model_checkpoint": best}))


def test_checkpoints_follow_the_trainer_and_come_back_on_restart(store: ArtifactStore,
                                                                 tmp_path: Path) -> None:
    """Saved checkpoints reach the store, rotated ones leave it, and a new attempt (another work
    dir) gets them back with the best checkpoint's path pointing into its own folder."""
    key = layout.job_checkpoints(JOB)
    first = Checkpoints(store, key, tmp_path / "attempt-1")
    assert first.restore() is None
    _ckpt(first.dir, 2, None)
    first.sync()
    _ckpt(first.dir, 4, str(first.dir / "checkpoint-2"))
    first.sync()
    assert first.stored() == ["checkpoint-2", "checkpoint-4"]
    import shutil

    shutil.rmtree(first.dir / "checkpoint-2")  # rotated away by the trainer
    _ckpt(first.dir, 6, str(first.dir / "checkpoint-4"))
    first.sync()
    assert first.stored() == ["checkpoint-4", "checkpoint-6"]

    second = Checkpoints(store, key, tmp_path / "attempt-2")
    last = second.restore()
    assert last is not None and Path(last).name == "checkpoint-6"
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(second.dir / "checkpoint-4")
    assert (second.dir / "checkpoint-4" / "adapter_model.safetensors").read_bytes() == bytes([4]) * 16
    if store.is_local:  # the trainer writes into the store's own folder: no copy at all
        assert second.dir == store.local_path(key)


def test_prepare_data_from_the_store(store: ArtifactStore, tiny_random_dir: Path, ticket_rows,
                                     tmp_path: Path) -> None:
    key = _put_dataset(store, ticket_rows[:12], tmp_path)
    data = pipeline.prepare_data(_job(store, tmp_path, tiny_random_dir, key))
    assert (len(data.train), len(data.eval)) == (8, 4)
    assert data.train.column_names == ["prompt", "completion"]
    assert len(data.lengths) == 8 and min(data.lengths) > 0


def test_prepare_data_refuses_a_missing_dataset(store: ArtifactStore, tiny_random_dir: Path,
                                                tmp_path: Path) -> None:
    with pytest.raises(pipeline.JobError, match="not found"):
        pipeline.prepare_data(_job(store, tmp_path, tiny_random_dir, layout.dataset_hf(DS)))


def test_build_then_train_reports_metrics(tiny_random_dir: Path, ticket_rows, tmp_path: Path) -> None:
    """build: the plan and the trainer (checkpoints in the job's folder); train: the metrics."""
    store = ArtifactStore(str(tmp_path / "artifacts"))
    job = _job(store, tmp_path, tiny_random_dir, _put_dataset(store, ticket_rows[:12], tmp_path),
               num_train_epochs=1)
    data = pipeline.prepare_data(job)
    built = pipeline.build(job, data, get_backend("peft"))
    assert built.hp.num_train_epochs == 1 and built.hp.per_device_train_batch_size == 4
    assert Path(built.trainer.args.output_dir) == store.local_path(layout.job_checkpoints(JOB))
    trained = pipeline.train(job, built, data)
    assert trained is not None
    m = trained.metrics
    assert (m["global_step"], m["train_rows"], m["eval_rows"]) == (2, 8, 4)
    assert m["num_tokens"] > 0 and m["best_checkpoint"] == "checkpoint-2"
    types = [json.loads(x)["type"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert types[0] == "plan" and "train_end" in types and "checkpoint" in types


def test_gguf_step_without_the_converter_publishes_nothing(store: ArtifactStore,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINER_GGUF_CONVERTER", raising=False)
    monkeypatch.delenv("TRAINER_LLAMA_CPP_DIR", raising=False)
    job = _job(store, tmp_path, tmp_path, layout.dataset_hf(DS))
    ref = pipeline.Reference([[1, 2]], ["gold"], [{"tokens": [3]}])
    ex = pipeline.ExportOptions(gguf=["q8_0"])
    checks, artifacts = pipeline.export_gguf(job, tmp_path, ref, ex)
    assert [c["passed"] for c in checks] == [False]
    assert artifacts[0]["quant"] == "q8_0" and "converter" in artifacts[0]["error"]
    assert not store.exists(layout.model_gguf(MV))


def test_a_whole_job_on_an_object_store_and_its_restart(s3_artifact_url: str, s3_storage_options,
                                                        tiny_random_dir: Path, ticket_rows,
                                                        tmp_path: Path) -> None:
    """run_job's own run() on S3: spec in, events + checkpoints + adapter + merged + result out,
    all in the bucket; a second attempt (the model and result lost) resumes from the bucket's
    checkpoints instead of training again, and publishes the same model id."""
    store = ArtifactStore(s3_artifact_url, **s3_storage_options)
    key = _put_dataset(store, ticket_rows[:12], tmp_path)
    spec = _job(store, tmp_path, tiny_random_dir, key, num_train_epochs=1).spec
    store.write_bytes(layout.job_spec(JOB), json.dumps(spec).encode())

    assert run_job.run(store, JOB, 0, 1, tmp_path / "attempt-1") == run_job.EXIT_OK
    result = json.loads(store.read_bytes(layout.job_result(JOB)))
    assert result["artifacts"]["merged"]["key"] == layout.model_merged(MV)
    assert store.exists(layout.model_adapter(MV)) and store.exists(layout.model_merged(MV))
    assert "config.json" in store.list(layout.model_merged(MV))
    assert result["export_checks"][0]["passed"]
    assert store.list(layout.job_checkpoints(JOB)) == ["checkpoint-2"]
    events, _ = read_store_events(store, layout.job_events(JOB), 0)
    types = [e["type"] for e in events]
    assert types[0] == "process_start" and types[-1] == "done" and "train_end" in types

    for k in (layout.job_result(JOB), layout.model(MV)):
        store.delete(k)
    assert run_job.run(store, JOB, 0, 1, tmp_path / "attempt-2") == run_job.EXIT_OK
    events2, _ = read_store_events(store, layout.job_events(JOB), 0)
    assert events2[:len(events)] == events  # the channel continues, nothing lost or repeated
    new = [e for e in events2[len(events):]]
    assert next(e for e in new if e["type"] == "resumed")["data"]["checkpoint"] == "checkpoint-2"
    assert not [e for e in new if e["type"] == "metrics"]  # nothing trained again
    assert store.exists(layout.model_merged(MV)) and store.exists(layout.job_result(JOB))
