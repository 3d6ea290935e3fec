"""GGUF export through llama.cpp's own converter and quantizer, offline; never faked.

The converter is llama.cpp's ``convert_hf_to_gguf.py`` with its bundled ``gguf-py`` (the PyPI
``gguf`` package does not match that script). It is found, in order, at ``$TRAINER_GGUF_CONVERTER``
(path of the script), or inside an unpacked ``llama-cpp-python`` source tree given by
``$TRAINER_LLAMA_CPP_DIR`` (``vendor/llama.cpp/convert_hf_to_gguf.py``). ``q8_0`` and ``f16`` come
straight from the converter; ``q4_k_m`` needs the quantizer, ``llama_cpp.llama_model_quantize``
from an installed ``llama-cpp-python``. Whatever is missing fails that export with a clear reason.
Verification runs the GGUF with llama.cpp greedily and records the token match ratio against
the adapter model's outputs (a recorded tolerance: quantization changes logits).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CONVERTER_QUANTS = {"f16": "f16", "q8_0": "q8_0"}
QUANTIZER_QUANTS = {"q4_k_m": 15}  # LLAMA_FTYPE_MOSTLY_Q4_K_M


class GGUFUnavailable(RuntimeError):
    """The converter or quantizer is not available offline here."""


def find_converter() -> Path:
    script = os.environ.get("TRAINER_GGUF_CONVERTER")
    candidates = [Path(script)] if script else []
    src = os.environ.get("TRAINER_LLAMA_CPP_DIR")
    if src:
        candidates += [Path(src) / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py",
                       Path(src) / "convert_hf_to_gguf.py"]
    for c in candidates:
        if c.is_file() and (c.parent / "gguf-py").is_dir():
            return c
    raise GGUFUnavailable(
        "GGUF converter not available: llama.cpp's convert_hf_to_gguf.py (with its gguf-py) was "
        "not found; set TRAINER_GGUF_CONVERTER to the script or TRAINER_LLAMA_CPP_DIR to an "
        "unpacked llama-cpp-python source tree (Unsloth's save_pretrained_gguf needs network)")


def convert(merged_dir: Path, out_file: Path, quant: str) -> None:
    """Write ``out_file`` as ``quant`` (f16 / q8_0 directly, q4_k_m via f16 + quantize)."""
    if quant not in CONVERTER_QUANTS and quant not in QUANTIZER_QUANTS:
        raise GGUFUnavailable(f"unknown GGUF quantization {quant!r}")
    script = find_converter()
    if quant in QUANTIZER_QUANTS and importlib.util.find_spec("llama_cpp") is None:
        raise GGUFUnavailable(f"{quant} needs llama.cpp's quantizer (llama-cpp-python), "
                              "which is not installed")
    outtype = CONVERTER_QUANTS.get(quant, "f16")
    first = out_file if quant in CONVERTER_QUANTS else out_file.with_suffix(".f16.tmp")
    env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py") + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(merged_dir), "--outtype", outtype,
                           "--outfile", str(first)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf failed ({proc.returncode}): {proc.stderr[-800:]}")
    if quant in QUANTIZER_QUANTS:
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = QUANTIZER_QUANTS[quant]
        rc = llama_cpp.llama_model_quantize(str(first).encode(), str(out_file).encode(), params)
        first.unlink(missing_ok=True)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({quant}) failed with {rc}")


def gguf_outputs(path: Path, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of the same token prompts with llama.cpp."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise GGUFUnavailable("GGUF verification needs llama-cpp-python, which is not installed")
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=4096, verbose=False, seed=0)
    outs: list[list[int]] = []
    for ids in prompt_ids:
        llm.reset()
        toks: list[int] = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if tok == llm.token_eos() or len(toks) >= max_new_tokens:
                break
            toks.append(tok)
        outs.append(toks)
    return outs


def export_all(merged_dir: Path, out_dir: Path, quants: list[str], reference: list[list[int]],
               prompt_ids: list[list[int]], max_new_tokens: int, min_match: float) -> list[dict[str, Any]]:
    """One result per quant: ``{"quant", "file", "bytes", "check": {...}}`` or ``{"quant", "error"}``."""
    from .verify import compare

    results = []
    for quant in quants:
        out = out_dir / f"{quant}.gguf"
        try:
            convert(merged_dir, out, quant)
            cmp = compare(reference, gguf_outputs(out, prompt_ids, max_new_tokens))
            ok = cmp["match"] >= min_match
            detail = f"token match {cmp['match']:.3f} (tolerance {min_match})"
            results.append({"quant": quant, "file": out.name, "bytes": out.stat().st_size,
                            "check": {"kind": f"gguf:{quant}", "passed": ok, "detail": detail}})
            if not ok:
                out.unlink(missing_ok=True)
        except Exception as exc:  # each quant fails on its own, with its reason
            out.unlink(missing_ok=True)
            results.append({"quant": quant, "error": str(exc),
                            "check": {"kind": f"gguf:{quant}", "passed": False, "detail": str(exc)}})
    return results
