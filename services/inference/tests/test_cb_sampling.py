"""Continuous-batching mode of the CPU engine: one sampling config for every request, so only
``temperature: 0`` on a greedy model is accepted; anything else is a clear 400."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.errors import InvalidRequest
from tuneloop_inference.engines.transformers import TransformersEngine
from tuneloop_inference.settings import InferenceSettings


def _engine(tmp_path: Path, do_sample: bool) -> TransformersEngine:
    model = tmp_path / f"m-{do_sample}"
    model.mkdir()
    (model / "generation_config.json").write_text(json.dumps({"do_sample": do_sample}))
    settings = InferenceSettings(data_dir=tmp_path, continuous_batching=True)
    return TransformersEngine(name="mv-x", model_dir=str(model), settings=settings,
                              log_path=tmp_path / "e.log", port=1)


def test_greedy_model_accepts_temperature_zero(tmp_path: Path) -> None:
    eng = _engine(tmp_path, do_sample=False)
    body = {"messages": [], "temperature": 0.0, "max_tokens": 8}
    eng.adapt_body("chat", body)  # no error: greedy is what the engine does anyway
    for key, value in (("temperature", 0.7), ("top_p", 0.9), ("stop", ["x"])):
        with pytest.raises(InvalidRequest) as exc:
            eng.adapt_body("chat", {"messages": [], key: value})
        assert exc.value.param == key and exc.value.code == "unsupported_parameter"


def test_sampling_model_rejects_temperature_zero(tmp_path: Path) -> None:
    eng = _engine(tmp_path, do_sample=True)
    with pytest.raises(InvalidRequest):
        eng.adapt_body("chat", {"messages": [], "temperature": 0})


def test_command_bounds_the_kv_cache(tmp_path: Path) -> None:
    eng = _engine(tmp_path, do_sample=False)
    cmd = eng.command()
    assert "--continuous-batching" in cmd
    assert cmd[cmd.index("--cb-kv-cache-tokens") + 1] == str(eng.settings.cb_kv_cache_tokens)


@pytest.mark.slow
def test_cb_engine_serves_concurrent_requests_with_a_bounded_cache(tmp_path: Path, tiny_base_dir: Path) -> None:
    """A real engine in continuous-batching mode: concurrent greedy requests all answered, and
    the KV cache is the size asked for, not a fraction of the machine's RAM."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tuneloop.testing.process import ServiceProcess

    eng = ServiceProcess("tuneloop_inference.engines.transformers_serve", health_path="/v1/models",
                         args=["--model-dir", str(tiny_base_dir), "--served-model-name", "tiny",
                               "--continuous-batching", "--cb-kv-cache-tokens", "1024"],
                         log_path=tmp_path / "engine.log", startup_timeout=180)
    eng.start()
    try:
        def ask(i: int) -> dict:
            body = {"model": "tiny", "max_tokens": 6, "temperature": 0,
                    "messages": [{"role": "user", "content": f"ticket {i}"}]}
            return httpx.post(eng.url + "/v1/chat/completions", json=body, timeout=300).json()

        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask, range(4)))
        assert all(r["choices"][0]["message"]["content"] is not None for r in replies), replies
        rss_kib = int(next(line.split()[1] for line in Path(f"/proc/{eng.proc.pid}/status").read_text()
                           .splitlines() if line.startswith("VmRSS:")))
        assert rss_kib < 3 * 1024 * 1024, f"engine RSS {rss_kib / 1024:.0f} MiB: the KV cache is not bounded"
    finally:
        eng.stop()
