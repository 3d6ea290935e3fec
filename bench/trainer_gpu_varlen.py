"""GPU training throughput on variable-length data: tuneloop's DEFAULTS against plain TRL.

Runs on the lent H200 (see ../shared/gpu/README.md):

    source .gpu/device-setup.sh unsloth && PYTHONPATH=shared/src:services/trainer/src:bench:$PYTHONPATH \
        python bench/trainer_gpu_varlen.py --out $OUT

Same GPU, model (Llama-3.2-1B shape, ~1.04B parameters, random weights, a tokenizer trained here)
and data (1,500 rows of 79-2,005 rendered tokens, median ~360: the shape of real datasets), LoRA
r16 on q/k/v/o. Each setup runs in its own process (Unsloth patches transformers/TRL globally):

- ``plain TRL``: ``SFTTrainer`` + PEFT in bf16 with TRL's defaults (no packing), batch 2 x
  accumulation 4, seq 2048 — what a user starts from;
- ``tuneloop default``: ``backend=auto`` and no hyperparameters except the step budget: the job's
  own code chooses (``training.plan_job``), and the packing isolation probe runs on the real
  collator and model before training (the H200 proof that packed rows do not see each other);
- tuneloop with one explicit setting changed (4-bit, packing off, checkpointing on), the
  article's recipe as the old default (4-bit, checkpointing, unpacked, 2 x 4), and the peft
  backend's defaults.

Tokens/s counts real tokens only (no padding), from the batches, over 32 optimizer steps after 3
warm-up steps. Writes ``<out>/trainer_gpu_varlen.json``. ``--small`` is a CPU dry run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from trainer_gpu import build_model, run_child  # noqa: E402

WARM, MEASURED = 3, 32
ARTICLE = {"load_in_4bit": True, "gradient_checkpointing": True, "packing": False,
           "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
# name -> (backend, explicit hyperparameters); "trl" is the plain TRL baseline
SETUPS = {
    "plain TRL SFTTrainer + PEFT, bf16, TRL defaults": ("trl", {}),
    "tuneloop default (backend auto, nothing set)": ("auto", {}),
    "tuneloop, load_in_4bit=true": ("auto", {"load_in_4bit": True}),
    "tuneloop, 8k tokens per forward (per_device_train_batch_size=4: the previous default)":
        ("auto", {"per_device_train_batch_size": 4}),
    "tuneloop, packing=false": ("auto", {"packing": False}),
    "tuneloop, gradient_checkpointing=true": ("auto", {"gradient_checkpointing": True}),
    "tuneloop, the article's recipe (old default: 4-bit, checkpointing, unpacked, 2 x 4)": ("auto", ARTICLE),
    "tuneloop, peft backend defaults": ("peft", {}),
}


def build_rows(n: int, seed: int = 3) -> list[dict]:
    """Rows of k tickets, k drawn so rendered lengths span ~80-2,000 tokens, median ~360."""
    from tuneloop.examples.support_tickets import generate

    rng = random.Random(seed)
    tickets = generate(n * 4, seed=seed)
    rows, pos = [], 0
    for i in range(n):
        k = max(1, min(24, int(round(rng.lognormvariate(1.25, 0.75)))))
        chunk = [tickets[(pos + j) % len(tickets)] for j in range(k)]
        pos += k
        prompt = "Summarize each support ticket and classify its urgency.\n\n" + "\n\n".join(
            f"Ticket {j + 1}:\n{t['input']}" for j, t in enumerate(chunk))
        answer = "[" + ", ".join(t["output"] for t in chunk) + "]"
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": answer}], "line": i + 1})
    return rows


def build_data(path: Path, n: int) -> Path:
    from datasets import Dataset, DatasetDict

    rows = build_rows(n)
    DatasetDict({"train": Dataset.from_list(rows[40:]), "eval": Dataset.from_list(rows[:40])}
                ).save_to_disk(str(path))
    return path


class Timer:
    """Marks (step, time, tokens) at every optimizer step end."""

    def __init__(self, cuda: bool, tokens) -> None:  # noqa: ANN001
        self.cuda, self.tokens, self.marks = cuda, tokens, []

    def callback(self):
        import torch
        from transformers import TrainerCallback

        timer = self

        class Cb(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if timer.cuda:
                    torch.cuda.synchronize()
                timer.marks.append((state.global_step, time.monotonic(), timer.tokens()))

        return Cb()

    def rate(self) -> dict:
        (s0, t0, n0), (s1, t1, n1) = self.marks[WARM - 1], self.marks[-1]
        return {"tokens_per_s": (n1 - n0) / (t1 - t0), "tokens_measured": n1 - n0,
                "steps_measured": s1 - s0, "step_time_s": (t1 - t0) / (s1 - s0)}


def measure(name: str, model_dir: str, data_dir: str, out_json: str) -> None:
    """Child process: one setup, WARM + MEASURED optimizer steps."""
    backend_name, explicit = SETUPS[name]
    res: dict = {"setup": name, "backend": backend_name, "explicit": explicit}
    if backend_name == "trl":
        trainer, cuda = _trl_trainer(model_dir, data_dir, res)
    else:
        trainer, cuda = _tuneloop_trainer(backend_name, explicit, model_dir, data_dir, res)
    import torch

    timer = Timer(cuda, lambda: trainer.tokens_seen)
    trainer.add_callback(timer.callback())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.monotonic()
    trainer.train()
    res.update(timer.rate(), train_wall_s=time.monotonic() - t0,
               peak_gpu_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None,
               final_loss=next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None))
    Path(out_json).write_text(json.dumps(res, default=str))


def _counting(cls):
    """``cls`` plus a count of the real tokens of every training batch (nothing else changed)."""
    import torch

    class Counting(cls):
        tokens_seen = 0

        def compute_loss(self, model, inputs, *a, **kw):
            if self.model.training:
                n = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                    torch.tensor(inputs["input_ids"].numel())
                self.tokens_seen += int(n)
            return super().compute_loss(model, inputs, *a, **kw)

    return Counting


def _trl_trainer(model_dir: str, data_dir: str, res: dict):
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneloop_trainer.data import to_prompt_completion

    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map={"": 0} if cuda else None)
    train = to_prompt_completion(load_from_disk(data_dir)["train"])
    cfg = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=2,
                    gradient_accumulation_steps=4, max_length=2048, max_steps=WARM + MEASURED,
                    learning_rate=2e-4, logging_steps=5, save_strategy="no", report_to=[],
                    bf16=cuda, use_cpu=not cuda, disable_tqdm=True)
    lora = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    res["hyperparameters"] = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
                              "packing": cfg.packing, "gradient_checkpointing": cfg.gradient_checkpointing,
                              "load_in_4bit": False}
    # on CPU (the --small dry run) TRL's Triton loss cannot run: the trainer's CPU fallback stands in
    from tuneloop_trainer.training import make_trainer_class

    return _counting(SFTTrainer if cuda else make_trainer_class())(model=model, args=cfg, train_dataset=train, peft_config=lora,
                                 processing_class=tok), cuda


def _tuneloop_trainer(backend_name: str, explicit: dict, model_dir: str, data_dir: str, res: dict):
    from tuneloop_trainer.backends import get_backend

    backend = get_backend(backend_name)  # unsloth first: it patches transformers/TRL
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tuneloop_trainer.events import EventWriter
    from tuneloop_trainer.hparams import Hyperparameters
    from tuneloop_trainer.data import row_lengths, to_prompt_completion
    from tuneloop_trainer.training import build_trainer, ensure_isolated_packing, make_callback, plan_job

    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp())
    ev = EventWriter(work / "events.jsonl")
    dd = load_from_disk(data_dir)
    train, eval_ = to_prompt_completion(dd["train"]), to_prompt_completion(dd["eval"])
    lengths = row_lengths(AutoTokenizer.from_pretrained(model_dir), train)
    given = Hyperparameters(**explicit, max_steps=WARM + MEASURED, logging_steps=5,
                            early_stopping_patience=0, warmup_steps=10)
    hp = plan_job(given, model_dir, backend.name, lengths, 0, ev)
    res.update(resolved_backend=backend.name, hyperparameters=hp.model_dump(),
               lengths={"rows": len(lengths), "min": min(lengths), "median": sorted(lengths)[len(lengths) // 2],
                        "max": max(lengths)})
    model, tok = backend.load(model_dir, hp)
    trainer = build_trainer(model, tok, hp, backend, train, eval_, work / "ckpt", 1,
                            [make_callback(ev, "bench")])
    if hp.packing:
        ensure_isolated_packing(trainer, ev)
    events = [json.loads(x) for x in (work / "events.jsonl").read_text().splitlines()]
    res["plan"] = next((e["data"] for e in events if e["type"] == "plan"), None)
    res["packing_check"] = next((e["data"] for e in events if e["type"] == "packing_check"), None)
    return trainer, cuda


def document(runs: dict, gpu: str | None, started: str) -> dict:
    import torch

    base_name = next(iter(SETUPS))
    base = runs.get(base_name, {})
    results = []
    for name, r in runs.items():
        if "tokens_per_s" not in r:
            continue
        b = base.get("tokens_per_s")
        results.append({"metric": f"tokens_per_s {name}", "value": round(r["tokens_per_s"], 1),
                        "unit": "tokens/s", "baseline": round(b, 1) if b else None,
                        "ratio": round(r["tokens_per_s"] / b, 3) if b else None})
        if r.get("peak_gpu_bytes") and base.get("peak_gpu_bytes"):
            results.append({"metric": f"peak GPU memory {name}", "value": round(r["peak_gpu_bytes"] / 2**30, 2),
                            "unit": "GiB", "baseline": round(base["peak_gpu_bytes"] / 2**30, 2),
                            "ratio": round(r["peak_gpu_bytes"] / base["peak_gpu_bytes"], 3)})
    default = runs.get("tuneloop default (backend auto, nothing set)", {})
    targets = {"ratio_vs_plain_trl": {"target": 3.5, "measured": (default.get("tokens_per_s") or 0)
                                      / (base.get("tokens_per_s") or float("inf"))},
               "tokens_per_s": {"target": 25000, "measured": default.get("tokens_per_s")}}
    return {"bench": "trainer_gpu_varlen", "when": started,
            "machine": {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda},
            "results": results, "targets": targets, "runs": runs,
            "notes": ("One GPU, one model (Llama-3.2-1B shape, ~1.04B params, random weights), one "
                      "dataset (1,460 train rows of variable length), LoRA r16/alpha16 on q/k/v/o; each "
                      "setup in its own process; real tokens only (padding excluded), counted from the "
                      f"batches over {MEASURED} optimizer steps after {WARM} warm-up steps; peak = "
                      "torch.cuda.max_memory_allocated. 'tuneloop default' sets nothing but the step "
                      "budget: its choices and reasons are in runs[...].plan, its packing isolation "
                      "probe (real collator + model) in runs[...].packing_check.")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--work", default="/tmp/trainer-varlen-bench")
    p.add_argument("--small", action="store_true", help="CPU dry run with a tiny model")
    p.add_argument("--only", default="", help="comma-separated setup indexes (0-based) to run")
    p.add_argument("--merge", default="", help="earlier JSON whose runs to keep")
    p.add_argument("--child-timeout", type=float, default=170)
    p.add_argument("--measure", nargs=4, metavar=("NAME", "MODEL", "DATA", "JSON"))
    a = p.parse_args()
    if a.measure:
        measure(*a.measure)
        return
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = work / "base-1b"
    if not (model_dir / "config.json").exists():
        build_model(model_dir, a.small)
    data = work / "data"
    if not data.exists():
        build_data(data, 120 if a.small else 1500)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    runs = {}
    if a.merge:  # rows of an earlier run stay, each saying which run measured it
        earlier = json.loads(Path(a.merge).read_text())
        runs = {k: {**v, "measured_in_run": v.get("measured_in_run", earlier.get("when"))}
                for k, v in earlier["runs"].items() if k in SETUPS}
    names = list(SETUPS)
    chosen = [names[int(i)] for i in a.only.split(",")] if a.only else names
    log = out / "trainer_gpu_varlen.log"
    for name in chosen:
        js = work / f"m-{names.index(name)}.json"
        js.unlink(missing_ok=True)
        t0 = time.monotonic()
        rc = run_child([sys.executable, __file__, "--measure", name, str(model_dir), str(data), str(js)],
                       log, a.child_timeout)
        runs[name] = json.loads(js.read_text()) if js.exists() else {"error": f"exit {rc}; see the log"}
        runs[name]["process_wall_s"] = round(time.monotonic() - t0, 1)
        print(name, json.dumps({k: runs[name].get(k) for k in ("tokens_per_s", "peak_gpu_bytes", "error",
                                                               "process_wall_s")}), flush=True)
        (out / "trainer_gpu_varlen.json").write_text(json.dumps(document(runs, gpu, started), indent=1,
                                                                default=str))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
