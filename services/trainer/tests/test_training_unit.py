"""Unit tests of the job-process core: response-only loss, warnings, events, verification, GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop_trainer import backends
from tuneloop_trainer.events import EventWriter, read_new_events
from tuneloop_trainer.export import gguf, verify
from tuneloop_trainer.hparams import ExportOptions, Hyperparameters
from tuneloop_trainer.data import data_warnings
from tuneloop_trainer.training import make_callback, make_trainer_class, sft_config

from trainer_testlib import FAST_HP, article_to_chat


def _events(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_loss_is_on_response_tokens_only(tiny_random_dir: Path, ticket_rows, tmp_path: Path):
    """TRL's collator masks every prompt token (-100); the labels left are exactly the answer."""
    from datasets import Dataset

    from tuneloop_trainer.data import to_prompt_completion

    hp = Hyperparameters(**FAST_HP)
    model, tok = backends.get_backend("peft").load(str(tiny_random_dir), hp)
    rows = [article_to_chat(r) for r in ticket_rows[:4]]
    ds = to_prompt_completion(Dataset.from_list(rows))
    trainer = make_trainer_class()(model=model, args=sft_config(hp, tmp_path / "out", {}, 4),
                                   train_dataset=ds, eval_dataset=ds, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for i, row in enumerate(rows[:2]):
        prompt_ids = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True,
                                             tokenize=True)["input_ids"]
        labels = batch["labels"][i].tolist()
        ids = batch["input_ids"][i].tolist()
        assert all(x == -100 for x in labels[:len(prompt_ids)]), "prompt tokens must not be trained"
        trained = [t for t in labels if t != -100]
        assert ids[:len(prompt_ids)] == prompt_ids
        assert tok.decode(trained).strip() == row["messages"][1]["content"] + "<|im_end|>"


def test_backend_resolution_on_cpu():
    assert backends.resolve("auto") == "peft"  # no CUDA here
    assert backends.resolve("unsloth") == "unsloth"
    with pytest.raises(ValueError):
        backends.resolve("deepspeed")


def test_hyperparameter_defaults_are_the_articles_and_ranges_hold():
    hp = Hyperparameters()
    assert (hp.per_device_train_batch_size, hp.gradient_accumulation_steps, hp.warmup_steps,
            hp.num_train_epochs, hp.learning_rate, hp.lora_r, hp.lora_alpha, hp.lora_dropout,
            hp.max_seq_length, hp.logging_steps, hp.bias) == (2, 4, 10, 3, 2e-4, 16, 16, 0, 2048, 10, "none")
    assert hp.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(ValueError):
        Hyperparameters(eval_strategy="steps")
    with pytest.raises(ValueError):
        Hyperparameters(target_modules=["q_proj; rm -rf"])
    with pytest.raises(ValueError):
        Hyperparameters(learning_rate=1.0)
    with pytest.raises(ValueError):
        ExportOptions(gguf=["q2_k"])


def test_article_warnings_as_events(tmp_path: Path):
    ev = EventWriter(tmp_path / "e.jsonl")
    data_warnings(ev, 48, Hyperparameters(num_train_epochs=5))
    data_warnings(ev, 500, Hyperparameters())
    codes = [e["data"]["code"] for e in _events(tmp_path / "e.jsonl")]
    assert codes == ["too_few_rows", "many_epochs_small_dataset", "few_rows"]


def test_overfitting_warning_when_eval_rises_while_train_falls(tmp_path: Path):
    from transformers import TrainerState, TrainingArguments

    ev = EventWriter(tmp_path / "e.jsonl")
    cb = make_callback(ev, "jobs/job-x/checkpoints")
    state, args = TrainerState(), TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state.max_steps = 30
    for step, loss, eval_loss in ((10, 2.0, 1.5), (20, 1.0, 1.4), (30, 0.5, 1.9)):
        state.global_step, state.epoch = step, step / 10
        cb.on_log(args, state, None, logs={"loss": loss, "learning_rate": 1e-4, "num_tokens": step * 100})
        cb.on_log(args, state, None, logs={"eval_loss": eval_loss})
    evs = _events(tmp_path / "e.jsonl")
    warnings = [e for e in evs if e["type"] == "warning"]
    assert [w["data"]["code"] for w in warnings] == ["overfitting"]
    assert warnings[0]["data"]["step"] == 30
    metrics = [e["data"] for e in evs if e["type"] == "metrics"]
    assert metrics[-1]["tokens_per_s"] > 0 and metrics[-1]["eta_s"] == 0


def test_event_file_tail_keeps_partial_lines(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    EventWriter(path).emit("metrics", step=1, loss=2.0)
    with open(path, "a") as fh:
        fh.write('{"type": "metrics", "data": {"st')  # a writer caught mid-line
    evs, off = read_new_events(path, 0)
    assert [e["data"]["step"] for e in evs] == [1]
    with open(path, "a") as fh:
        fh.write('ep": 2}}\n')
    evs, off2 = read_new_events(path, off)
    assert [e["data"]["step"] for e in evs] == [2] and off2 == path.stat().st_size
    assert read_new_events(tmp_path / "missing.jsonl", 0) == ([], 0)


def test_verification_compare_reports_first_divergence():
    same = verify.compare([[1, 2, 3], [4]], [[1, 2, 3], [4]])
    assert same["passed"] and same["match"] == 1.0
    diff = verify.compare([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]])
    assert not diff["passed"] and diff["first_divergence"] == {"prompt": 1, "position": 1}
    assert "prompt 1 at token 1" in diff["detail"]


def test_gguf_fails_clearly_without_the_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TRAINER_GGUF_CONVERTER", raising=False)
    monkeypatch.delenv("TRAINER_LLAMA_CPP_DIR", raising=False)
    with pytest.raises(gguf.GGUFUnavailable, match="convert_hf_to_gguf.py"):
        gguf.find_converter()
    res = gguf.export_all(tmp_path, tmp_path, ["q8_0", "q4_k_m"], [[1]], [[1]], 4, 0.9)
    assert [r["check"]["passed"] for r in res] == [False, False]
    assert all("GGUF converter not available" in r["error"] for r in res)
    assert not list(tmp_path.glob("*.gguf"))  # nothing faked


def test_early_stopping_exports_the_best_checkpoint(tiny_random_dir: Path, ticket_rows, tmp_path: Path):
    """A whole job in-process, made to overfit/diverge on purpose (lr at its maximum, LoRA scale
    16): the eval loss rises, patience 1 stops training at the next evaluation, and the best
    (earlier) checkpoint is what gets merged, verified and published."""
    from datasets import Dataset, DatasetDict

    from tuneloop.storage import ArtifactStore
    from tuneloop_trainer import pipeline

    store = ArtifactStore(str(tmp_path / "store"))
    rows = [article_to_chat(r) | {"line": i + 1} for i, r in enumerate(ticket_rows[:24])]
    DatasetDict({"train": Dataset.from_list(rows[:20]), "eval": Dataset.from_list(rows[20:])}) \
        .save_to_disk(str(store.local_path("datasets/ds-00000000000000e1/hf")))
    spec = {"job_id": "job-00000000000000e1", "model_id": "mv-00000000000000e1",
            "dataset_key": "datasets/ds-00000000000000e1/hf", "base_model": str(tiny_random_dir),
            "backend": "peft",
            "hyperparameters": {**FAST_HP, "num_train_epochs": 10, "eval_strategy": "steps",
                                "eval_steps": 2, "early_stopping_patience": 1, "learning_rate": 1e-2,
                                "warmup_steps": 0, "lora_alpha": 256},
            "export": {"verify_prompts": 1, "verify_max_new_tokens": 4}}
    ev = EventWriter(tmp_path / "events.jsonl")
    result = pipeline.run(spec, store, ev, tmp_path / "work")
    m = result["metrics"]
    evals = [e["data"]["eval_loss"] for e in _events(tmp_path / "events.jsonl") if e["type"] == "eval"]
    assert m["stopped_early"] and m["max_steps"] == 50, (m, evals)
    best_i = evals.index(min(evals))
    assert evals[-1] > evals[best_i] and best_i < len(evals) - 1, evals  # patience 1: last was worse
    best_name, last_name = f"checkpoint-{2 * (best_i + 1)}", f"checkpoint-{m['global_step']}"
    assert m["best_checkpoint"] == best_name and m["best_eval_loss"] == min(evals)
    evs = _events(tmp_path / "events.jsonl")
    assert [e["data"]["name"] for e in evs if e["type"] == "checkpoint"][-1] == last_name
    assert next(e for e in evs if e["type"] == "early_stopped")["data"]["best_checkpoint"] == best_name
    from safetensors.torch import load_file

    exported = load_file(store.local_path("models/mv-00000000000000e1/adapter") / "adapter_model.safetensors")
    ckpts = store.local_path("jobs/job-00000000000000e1/checkpoints")
    best = load_file(ckpts / best_name / "adapter_model.safetensors")
    last = load_file(ckpts / last_name / "adapter_model.safetensors")
    k = next(iter(best))
    assert (exported[k] == best[k]).all() and not (exported[k] == last[k]).all()
    assert result["export_checks"][0]["passed"]


def test_push_to_hub_reports_why_it_did_not_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tuneloop_trainer.export.publish import push_to_hub as _push

    ev = EventWriter(tmp_path / "e.jsonl")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert _push(tmp_path, "org/model", ev) == {"kind": "push_to_hub", "passed": False,
                                                "detail": "push_to_hub skipped: no HF_TOKEN"}
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "no network" in _push(tmp_path, "org/model", ev)["detail"]
    assert [e["data"]["code"] for e in _events(tmp_path / "e.jsonl")] == ["push_to_hub_failed"] * 2


def test_local_executor_hands_out_one_gpu_per_job(tmp_path: Path):
    """Jobs get CUDA_VISIBLE_DEVICES from the pool; a finished job gives its GPU back; a job
    whose spec is missing exits non-zero with the reason in its log tail."""
    import asyncio
    import time

    from tuneloop.storage import ArtifactStore
    from tuneloop_trainer.executors.local import LocalExecutor
    from tuneloop_trainer.settings import TrainerSettings

    ex = LocalExecutor(TrainerSettings(data_dir=tmp_path, gpu_ids=["0", "1"]),
                       ArtifactStore(str(tmp_path / "store")))

    async def scenario() -> None:
        a = await ex.start("job-00000000000000g1")
        b = await ex.start("job-00000000000000g2")
        assert (a["gpu"], b["gpu"]) == ("0", "1")
        with pytest.raises(RuntimeError, match="no free GPU"):
            await ex.start("job-00000000000000g3")
        deadline = time.monotonic() + 120
        end = None
        while end is None and time.monotonic() < deadline:
            end = await ex.poll("job-00000000000000g1", a)
            await asyncio.sleep(0.2)
        assert end is not None and end.returncode == 1 and "spec.json" in end.reason
        assert (await ex.start("job-00000000000000g3"))["gpu"] == "0"
        await ex.close()

    asyncio.run(scenario())
