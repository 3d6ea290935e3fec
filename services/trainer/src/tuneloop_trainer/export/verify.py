"""Export verification: the merged model must reproduce the adapter model's greedy outputs.

Both sides compute in fp32 from the same 16-bit base weights: the reference is
``base (16-bit, upcast) + LoRA adapter``, the candidate the saved merged folder (upcast). Greedy
tokens must be equal token for token on fixed prompts from the eval split; the check records
the first divergence so a failure is explainable.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any


def render_prompts(tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[list[int]]:
    """Chat-template the prompt messages (with the generation prompt) into token ids."""
    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
            ids = ids["input_ids"]
        out.append(list(ids))
    return out


def greedy(model: Any, prompt_ids: list[list[int]], max_new_tokens: int, eos: Any, pad: Any) -> list[list[int]]:
    import torch

    device = next(model.parameters()).device
    outs = []
    for ids in prompt_ids:
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=eos, pad_token_id=pad)
        outs.append(y[0, len(ids):].tolist())
    return outs


def _load(path: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    m = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                             device_map={"": 0} if cuda else None)
    return m.float().eval()


def adapter_outputs(base_model: str, adapter_dir: Path, prompt_ids: list[list[int]],
                    max_new_tokens: int, dtype: str, eos: Any, pad: Any) -> list[list[int]]:
    from peft import PeftModel

    base = _load(base_model, dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).float().eval()
    try:
        return greedy(model, prompt_ids, max_new_tokens, eos, pad)
    finally:
        del model, base
        _free()


def merged_outputs(merged_dir: Path, prompt_ids: list[list[int]], max_new_tokens: int,
                   eos: Any, pad: Any) -> list[list[int]]:
    import json

    dtype = json.loads((Path(merged_dir) / "config.json").read_text()).get("dtype") or "bfloat16"
    model = _load(str(merged_dir), dtype)
    try:
        return greedy(model, prompt_ids, max_new_tokens, eos, pad)
    finally:
        del model
        _free()


def compare(reference: list[list[int]], candidate: list[list[int]]) -> dict[str, Any]:
    """Token-for-token comparison -> ``{"passed", "detail", "prompts", "first_divergence", "match"}``."""
    first = None
    same = total = 0
    for i, (r, c) in enumerate(zip(reference, candidate)):
        total += max(len(r), len(c))
        same += sum(1 for a, b in zip(r, c) if a == b)
        if r != c and first is None:
            pos = next((j for j, (a, b) in enumerate(zip(r, c)) if a != b), min(len(r), len(c)))
            first = {"prompt": i, "position": pos}
    passed = first is None and len(reference) == len(candidate)
    n = len(reference)
    detail = (f"greedy outputs identical on {n} prompts ({total} tokens)" if passed else
              f"greedy outputs differ: prompt {first['prompt']} at token {first['position']}"
              if first else "prompt count differs")
    return {"passed": passed, "detail": detail, "prompts": n, "tokens": total,
            "match": (same / total) if total else 1.0, "first_divergence": first}


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass
