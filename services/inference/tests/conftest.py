"""Fixtures for the inference service tests: tiny local models, an artifact store holding two
model versions and a LoRA adapter, a broken model, and the real service process (real CPU
engines: vLLM's CPU build, the default; a few tests pin the fallback, transformers serve)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tuneloop.testing import ServiceProcess

ADMIN_KEY = "test-admin-key"
V1 = "mv-0000000000000001"
V2 = "mv-0000000000000002"
V3 = "mv-0000000000000003"  # a LoRA adapter of the base (tiny_random_dir), as the trainer writes it
# engine settings sized for tests: eager (no compilation), a small KV cache per engine
VLLM_TEST_ENV = {"INFERENCE_VLLM_CPU_KV_CACHE_GIB": "0.25"}


@pytest.fixture(scope="session")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (different seed): the 'new fine-tune' of the swap tests."""
    from tuneloop.testing.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-v2") / "model", seed=1)


@pytest.fixture(scope="session")
def broken_model_dir(tiny_random_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Looks like a model folder, but its weights file is truncated garbage."""
    out = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_random_dir, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return out


@pytest.fixture(scope="session")
def adapter_dir(tiny_random_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter of the tiny base with non-zero weights (its answers differ from the
    base's), saved as the trainer saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_random_dir)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_random_dir: Path,
             second_model_dir: Path, adapter_dir: Path) -> Path:
    """A data dir whose artifact store holds two model versions as the trainer writes them, and
    the adapter of a third."""
    root = tmp_path_factory.mktemp("inference-var")
    for mv, src in ((V1, tiny_random_dir), (V2, second_model_dir)):
        shutil.copytree(src, root / "artifacts" / "models" / mv / "merged")
    shutil.copytree(adapter_dir, root / "artifacts" / "models" / V3 / "adapter")
    return root


def start_service(data_dir: Path, base_dir: Path, **env: str) -> ServiceProcess:
    proc = ServiceProcess(
        "tuneloop_inference",
        env={"TUNELOOP_DATA_DIR": str(data_dir), "INFERENCE_ADMIN_KEY": ADMIN_KEY,
             "INFERENCE_BASE_MODEL_PATH": str(base_dir), "INFERENCE_ENGINE": "vllm", **VLLM_TEST_ENV,
             "INFERENCE_REPLICA_ID": "replica-a", "INFERENCE_HEALTH_INTERVAL_S": "0.5",
             "INFERENCE_RECONCILE_INTERVAL_S": "1", "TUNELOOP_LOG_JSON": "false", **env},
        log_path=data_dir / "logs" / "service.log", health_path="/ready",
        startup_timeout=240)
    return proc.start()


@pytest.fixture(scope="session")
def start_inference():
    """Factory: ``start_inference(data_dir, base_dir, **env)`` -> started ServiceProcess."""
    return start_service


@pytest.fixture(scope="module")
def service(data_dir: Path, tiny_random_dir: Path):
    proc = start_service(data_dir, tiny_random_dir)
    yield proc
    proc.stop(timeout=60)


@pytest.fixture()
def admin(service: ServiceProcess):
    with httpx.Client(base_url=service.url, timeout=300,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client
