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
