"""The CPU engine choice without starting one: vLLM's CPU build is the default wherever its
interpreter is installed, its command line and environment carry the CPU settings, engines are
spread over the cores, and the fallback (transformers serve) refuses to start on a transformers
its patches were not written for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop_inference.engines import (EngineError, make_engine, resolve_engine_kind,
                                        vllm_device, vllm_python)
from tuneloop_inference.placement import CpuCores
from tuneloop_inference.settings import InferenceSettings


def test_cores_are_split_between_blue_and_green() -> None:
    two = CpuCores([0, 1])
    assert [two.place("blue"), two.place("green")] == ["0", "1"]
    assert two.place("blue") == "0"                      # idempotent per engine
    two.release("blue")
    assert two.place("next") == "0"                      # the freed core, not green's
    assert two.place("third") in ("0", "1")              # more engines than sets: shared
    big = CpuCores(list(range(16)))
    assert [big.place("a"), big.place("b")] == ["0-7", "8-15"]
    assert [CpuCores([3]).place("a")] == ["3"]


def test_vllm_is_the_cpu_engine_when_its_interpreter_is_there(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n")
    settings = InferenceSettings(data_dir=tmp_path, vllm_python=str(fake), vllm_device="cpu")
    assert resolve_engine_kind(settings) == "vllm" and vllm_python(settings) == str(fake)
    assert resolve_engine_kind(InferenceSettings(data_dir=tmp_path, engine="transformers")) \
        == "transformers"
    assert vllm_device(InferenceSettings(data_dir=tmp_path, gpu_ids=["0"])) == "cuda"


def test_cpu_command_line_and_environment(tmp_path: Path, monkeypatch) -> None:
    for inherited in ("VLLM_USE_AOT_COMPILE", "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(inherited, raising=False)  # an engine's env starts from this one's
    settings = InferenceSettings(data_dir=tmp_path, vllm_python="/opt/vllm/bin/python",
                                 vllm_device="cpu", vllm_cpu_kv_cache_gib=0.5,
                                 vllm_dtype="float32", engine_max_num_seqs=32)
    engine = make_engine("vllm", name="mv-1", model_dir="/m", settings=settings,
                         log_path=tmp_path / "l", cpus="1")
    cmd = engine.command()
    assert cmd[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    opts = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1) if cmd[i].startswith("--")}
    assert opts["--model"] == "/m" and opts["--served-model-name"] == "mv-1"
    assert opts["--kv-cache-memory-bytes"] == str(512 << 20) and opts["--dtype"] == "float32"
    assert opts["--max-num-seqs"] == "32"
    assert "--enforce-eager" in cmd and "--gpu-memory-utilization" not in cmd
    assert "--enable-lora" not in cmd           # LoRA slows every request: the base only
    env = engine.env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in env and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    assert "VLLM_USE_AOT_COMPILE" not in env    # eager: nothing is compiled
    # compiled on CPU: vLLM's AOT cache cannot reload an inductor-compiled CPU model (engines/
    # vllm.py), so it is off and inductor's own cache lives in the data dir
    compiled = make_engine("vllm", name="mv-2", model_dir="/m", log_path=tmp_path / "l",
                           settings=settings.model_copy(update={"vllm_enforce_eager": False}))
    assert "--enforce-eager" not in compiled.command()
    assert compiled.env()["VLLM_USE_AOT_COMPILE"] == "0"
    assert compiled.env()["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torchinductor")
    base = make_engine("vllm", name="base", model_dir="/b", settings=settings,
                       log_path=tmp_path / "l")
    cmd = base.command()
    assert cmd[cmd.index("--enable-lora") + 1:cmd.index("--enable-lora") + 5] == [
        "--max-lora-rank", "16", "--max-loras", "4"]   # several tenants' adapters at once
    assert base.env()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    with pytest.raises(EngineError) as err:   # no tensor parallelism on a CPU
        make_engine("vllm", name="x", model_dir="/m", settings=settings, log_path=tmp_path / "l",
                    tensor_parallel_size=2)
    assert err.value.code == "tensor_parallel_unsupported"
    gpu = InferenceSettings(data_dir=tmp_path, vllm_device="cuda")
    assert "--enforce-eager" not in make_engine("vllm", name="g", model_dir="/m", settings=gpu,
                                                log_path=tmp_path / "l").command()


def test_no_vllm_interpreter_is_a_clear_engine_error(tmp_path: Path, monkeypatch) -> None:
    import tuneloop_inference.engines.vllm as mod

    monkeypatch.setattr(mod, "vllm_python", lambda settings: None)
    settings = InferenceSettings(data_dir=tmp_path, vllm_device="cpu")
    engine = make_engine("vllm", name="x", model_dir="/m", settings=settings,
                         log_path=tmp_path / "l")
    with pytest.raises(EngineError) as err:
        engine.command()
    assert err.value.code == "engine_unavailable" and "make venv" in str(err.value)


def test_fallback_engine_refuses_an_untested_transformers(monkeypatch) -> None:
    import transformers

    from tuneloop_inference.engines import transformers_serve

    transformers_serve.self_test()  # the pinned transformers: every patched target is there
    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    with pytest.raises(transformers_serve.PatchError) as err:
        transformers_serve.self_test()
    assert "5.99.0" in str(err.value) and "vllm" in str(err.value)
    with pytest.raises(SystemExit) as stop:   # the engine process exits with that message
        transformers_serve.main(["--model-dir", "/m", "--served-model-name", "x",
                                 "--port", "1"])
    assert "5.99.0" in str(stop.value)


def test_pools_keep_connections_for_less_than_each_engine(tmp_path: Path) -> None:
    """The idle race (issue 15) stays closed while pooled connections live long: a vLLM engine
    is told to keep idle connections as long as our servers do (65 s), so the pool keeps them
    60 s and a burst after a pause reuses them; ``transformers serve`` keeps uvicorn's 5 s, so
    its pool keeps 2 s."""
    settings = InferenceSettings(data_dir=tmp_path, vllm_python="/opt/vllm/bin/python",
                                 vllm_device="cpu")
    vllm = make_engine("vllm", name="mv-1", model_dir="/m", settings=settings,
                       log_path=tmp_path / "l")
    assert vllm.env()["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "65"
    assert vllm.server_keepalive_s() == 65 and vllm.pool_keepalive_s() == 60
    fallback = make_engine("transformers", name="mv-2", model_dir="/m", settings=settings,
                           log_path=tmp_path / "l")
    assert fallback.server_keepalive_s() == 5 and fallback.pool_keepalive_s() == 2
    short = settings.model_copy(update={"keepalive_timeout_s": 10.0, "engine_keepalive_s": 30.0})
    told = make_engine("vllm", name="mv-3", model_dir="/m", settings=short,
                       log_path=tmp_path / "l")
    assert told.env()["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "10" and told.pool_keepalive_s() == 7
