"""Export check: the exported (merged 16-bit) model must behave like the model that was trained.

Why not "merged == base + adapter, token for token" (the old check): it compared the export with a
*16-bit* base + adapter, never with what was trained (a 4-bit base when the job trained in 4-bit),
and it failed on numerical near-ties (top-two logits 0.005 apart flip under a bf16 merge) while it
passed a 4-bit job whose export answered in prose where the trained model answered in JSON.

What it does now, on ``verify_prompts`` held-out prompts:

1. **Reference = the trained model itself**, in memory, right after training (4-bit base + LoRA
   when trained in 4-bit): its greedy answers and, at each step, the gap between its top two
   logits.
2. **Tokens, tolerant of ties**: the merged folder, loaded as it is served (its 16-bit dtype on a
   GPU; fp32 on CPU), reads the reference answer teacher-forced; at every position where the
   trained model was decisive (top-two gap >= ``verify_tie_tolerance``) the merged model's top
   token must be the reference token. Near-ties are counted and skipped, not failed. The
   agreement over decisive positions must reach ``verify_min_agreement``.
3. **Task behaviour**: both models' free-running greedy answers are scored against the held-out
   answers (ROUGE-L; JSON validity when the answers are JSON); the merged model may not score
   more than ``verify_task_tolerance`` below the trained one.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

from tuneloop.textmetrics import parse_json, rouge_l


def render_prompts(tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[list[int]]:
    """Chat-template the prompt messages (with the generation prompt) into token ids."""
    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
            ids = ids["input_ids"]
        out.append(list(ids))
    return out


def greedy_with_gaps(model: Any, prompt_ids: list[list[int]], max_new_tokens: int, eos: Any,
                     pad: Any) -> list[dict[str, list]]:
    """Greedy answers of ``model`` and, per generated token, the top-two logit gap."""
    import torch

    device = next(model.parameters()).device
    outs = []
    for ids in prompt_ids:
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                               max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                               pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
        toks = y.sequences[0, len(ids):].tolist()
        gaps = []
        for score in y.scores[:len(toks)]:
            top = torch.topk(score[0].float(), 2).values
            gaps.append(float(top[0] - top[1]))
        outs.append({"tokens": toks, "gaps": gaps})
    return outs


def greedy(model: Any, prompt_ids: list[list[int]], max_new_tokens: int, eos: Any, pad: Any) -> list[list[int]]:
    return [o["tokens"] for o in greedy_with_gaps(model, prompt_ids, max_new_tokens, eos, pad)]


def load_served(path: Path) -> Any:
    """The merged folder as an engine serves it: its saved 16-bit dtype on a GPU, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = json.loads((Path(path) / "config.json").read_text()).get("dtype") or "bfloat16"
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype) if cuda else torch.float32,
                                             device_map={"": 0} if cuda else None)
    return m.eval()


def teacher_forced(model: Any, prompt_ids: list[list[int]], reference: list[dict[str, list]]
                   ) -> list[list[int]]:
    """The model's top token at each position of each reference answer (read teacher-forced)."""
    import torch

    device = next(model.parameters()).device
    out: list[list[int]] = []
    for ids, ref in zip(prompt_ids, reference):
        toks = ref["tokens"]
        if not toks:
            out.append([])
            continue
        x = torch.tensor([ids + toks], device=device)
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False).logits[0]
        out.append(logits[len(ids) - 1:len(ids) + len(toks) - 1].argmax(-1).tolist())
    return out


def task_score(texts: list[str], golds: list[str]) -> dict[str, float]:
    """Mean ROUGE-L against the held-out answers, and JSON validity when the answers are JSON."""
    n = max(1, len(texts))
    out = {"rougeL": sum(rouge_l(t, g) for t, g in zip(texts, golds)) / n}
    if golds and all(parse_json(g) is not None for g in golds):
        out["json_valid"] = sum(parse_json(t) is not None for t in texts) / n
    return out


def check(reference: list[dict[str, list]], forced: list[list[int]], ref_texts: list[str],
          cand_texts: list[str], golds: list[str], tie_tolerance: float, min_agreement: float,
          task_tolerance: float) -> dict[str, Any]:
    """The verdict of the three comparisons -> an ``export_check`` record."""
    decisive = agree = ties = 0
    first = None
    for i, (ref, top) in enumerate(zip(reference, forced)):
        for j, (tok, gap, got) in enumerate(zip(ref["tokens"], ref["gaps"], top)):
            if gap < tie_tolerance:
                ties += 1
                continue
            decisive += 1
            if got == tok:
                agree += 1
            elif first is None:
                first = {"prompt": i, "position": j, "gap": round(gap, 4)}
    agreement = agree / decisive if decisive else 1.0
    trained, merged = task_score(ref_texts, golds), task_score(cand_texts, golds)
    drops = {k: trained[k] - merged.get(k, 0.0) for k in trained}
    worst = max(drops, key=lambda k: drops[k]) if drops else None
    tokens_ok = agreement >= min_agreement
    task_ok = not worst or drops[worst] <= task_tolerance + 1e-9
    passed = tokens_ok and task_ok
    parts = [f"token agreement {agreement:.3f} on {decisive} decisive positions "
             f"({ties} near-ties under {tie_tolerance} skipped; needs >= {min_agreement})"]
    parts.append("task: " + ", ".join(f"{k} trained {trained[k]:.3f} vs merged {merged.get(k, 0):.3f}"
                                      for k in trained) + f" (tolerance {task_tolerance})")
    if not tokens_ok and first:
        parts.append(f"first decisive divergence: prompt {first['prompt']} at token "
                     f"{first['position']} (trained model's top-two gap {first['gap']})")
    return {"kind": "merged_vs_trained", "passed": passed, "detail": "; ".join(parts),
            "prompts": len(reference), "tokens": sum(len(r["tokens"]) for r in reference),
            "decisive_tokens": decisive, "near_ties": ties, "agreement": agreement,
            "task_trained": trained, "task_merged": merged, "first_divergence": first}


def verify_merged(merged_dir: Path, prompt_ids: list[list[int]], reference: list[dict[str, list]],
                  golds: list[str], decode: Any, max_new_tokens: int, eos: Any, pad: Any,
                  tie_tolerance: float, min_agreement: float, task_tolerance: float) -> dict[str, Any]:
    """Load the merged folder as served and compare it with the trained model's reference."""
    model = load_served(merged_dir)
    try:
        forced = teacher_forced(model, prompt_ids, reference)
        cand = greedy(model, prompt_ids, max_new_tokens, eos, pad)
    finally:
        del model
        _free()
    return check(reference, forced, [decode(r["tokens"]) for r in reference],
                 [decode(c) for c in cand], golds, tie_tolerance, min_agreement, task_tolerance)


def compare(reference: list[list[int]], candidate: list[list[int]]) -> dict[str, Any]:
    """Token-for-token comparison (GGUF exports) -> ``{"passed", "detail", "match", ...}``."""
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
