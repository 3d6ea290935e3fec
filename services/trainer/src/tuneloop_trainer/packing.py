"""Packed rows must not see each other: a probe that proves it on the job's own model and collator.

With packing (TRL's BFD strategy) several rows share one sequence; the collator drops the
attention mask and restarts ``position_ids`` at each row, and the attention implementation must
turn those restarts into a block-diagonal mask. FlashAttention's varlen kernels do; transformers
>= 5 builds the same mask for SDPA/eager from the position ids (only when no KV cache is made,
which is why training passes ``use_cache=False``); Unsloth reads ``packed_seq_lengths``. Rather
than trusting a list of implementation names, the job runs this probe once before training: one
packed batch from the real training set, through the trainer's real collator and model, against
each of its rows collated alone. Every row's logits and loss must match, else the job trains
unpacked and says why.
"""

from __future__ import annotations

from typing import Any

LOGIT_TOL = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.1}  # max |logit diff| allowed
LOSS_TOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 1e-2}


def split_packed(example: dict[str, Any]) -> list[dict[str, Any]]:
    """One packed example -> its rows (every per-token column sliced, ``seq_lengths`` reset)."""
    lengths = list(example["seq_lengths"])
    n = len(example["input_ids"])
    rows, start = [], 0
    for length in lengths:
        row = {}
        for key, value in example.items():
            if key == "seq_lengths":
                row[key] = [length]
            elif isinstance(value, (list, tuple)) and len(value) == n:
                row[key] = list(value[start:start + length])
        rows.append(row)
        start += length
    return rows


def _forward(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Logits (fp32) and per-token labels of one collated batch, without a KV cache."""
    import torch

    device = next(model.parameters()).device
    batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
    labels = batch.pop("labels", None)
    with torch.no_grad():
        out = model(**batch, use_cache=False)
    logits = out.logits if getattr(out, "logits", None) is not None else out[0]
    return logits.float(), labels


def _loss(logits: Any, labels: Any) -> float:
    import torch.nn.functional as F

    shift = labels[..., 1:].reshape(-1)
    lg = logits[..., :-1, :].reshape(-1, logits.shape[-1])
    keep = shift != -100
    if not bool(keep.any()):
        return 0.0
    return float(F.cross_entropy(lg[keep], shift[keep]))


def isolation_probe(model: Any, collator: Any, dataset: Any, dtype: str = "float32",
                    max_rows: int = 4) -> dict[str, Any]:
    """Compare each row of the first multi-row pack in ``dataset`` packed vs alone.

    Returns ``{"passed", "rows", "max_logit_diff", "max_loss_diff", "tolerance", "detail"}``;
    ``passed`` is None when no pack holds two rows (nothing to prove).
    """
    example = next((dataset[i] for i in range(min(len(dataset), 64))
                    if len(dataset[i].get("seq_lengths") or []) >= 2), None)
    if example is None:
        return {"passed": None, "rows": 0, "detail": "no pack holds two rows"}
    rows = split_packed(example)[:max_rows]
    packed_example = {k: v for k, v in example.items()}
    total = sum(len(r["input_ids"]) for r in rows)
    packed_example = {k: (v[:total] if isinstance(v, list) and len(v) == len(example["input_ids"])
                          else v) for k, v in packed_example.items()}
    packed_example["seq_lengths"] = [len(r["input_ids"]) for r in rows]
    was_training = model.training
    model.eval()
    try:
        p_logits, p_labels = _forward(model, collator([packed_example]))
        worst_logit = worst_loss = 0.0
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            a_logits, a_labels = _forward(model, collator([row]))
            pl, plab = p_logits[:, start:start + n], p_labels[:, start:start + n]
            worst_logit = max(worst_logit, float((pl - a_logits[:, :n]).abs().max()))
            worst_loss = max(worst_loss, abs(_loss(pl, plab) - _loss(a_logits[:, :n], a_labels[:, :n])))
            start += n
    finally:
        model.train(was_training)
    tol_l, tol_s = LOGIT_TOL.get(dtype, 0.25), LOSS_TOL.get(dtype, 2e-2)
    passed = worst_logit <= tol_l and worst_loss <= tol_s
    return {"passed": passed, "rows": len(rows), "tokens": total,
            "max_logit_diff": worst_logit, "max_loss_diff": worst_loss,
            "tolerance": {"logit": tol_l, "loss": tol_s},
            "detail": (f"{len(rows)} packed rows ({total} tokens) match each row alone: max logit "
                       f"diff {worst_logit:.2e}, max loss diff {worst_loss:.2e}") if passed else
                      (f"packed rows attend to each other: max logit diff {worst_logit:.3g} "
                       f"(tolerance {tol_l}), max loss diff {worst_loss:.3g} (tolerance {tol_s})")}
