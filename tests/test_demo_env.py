"""The demo's service environment follows the engine it will get: the whole general suite on
vLLM (CPU or GPU), a stated 200-item subset on the transformers fallback."""

from __future__ import annotations

import os
from pathlib import Path

from tuneloop import demo


def _env_for(monkeypatch, tmp_path: Path, **given: str) -> dict[str, str]:
    env = dict(given)
    monkeypatch.setattr(os, "environ", env)
    demo.configure_env(tmp_path / "var", tmp_path / "base", 64)
    return env


def test_transformers_fallback_gets_the_suite_subset(monkeypatch, tmp_path):
    env = _env_for(monkeypatch, tmp_path, INFERENCE_ENGINE="transformers")
    assert env["GATEWAY_GENERAL_SUITE_SIZE"] == "200"


def test_vllm_cpu_gets_the_whole_suite(monkeypatch, tmp_path):
    env = _env_for(monkeypatch, tmp_path, INFERENCE_VLLM_PYTHON="/opt/vllm/bin/python")
    assert "GATEWAY_GENERAL_SUITE_SIZE" not in env
    env = _env_for(monkeypatch, tmp_path, INFERENCE_ENGINE="vllm")
    assert "GATEWAY_GENERAL_SUITE_SIZE" not in env


def test_a_users_setting_wins(monkeypatch, tmp_path):
    env = _env_for(monkeypatch, tmp_path, INFERENCE_ENGINE="transformers",
                   GATEWAY_GENERAL_SUITE_SIZE="80")
    assert env["GATEWAY_GENERAL_SUITE_SIZE"] == "80"


def test_gpu_demo_runs_the_whole_suite_on_vllm(monkeypatch, tmp_path):
    env = dict(INFERENCE_ENGINE="transformers")
    monkeypatch.setattr(os, "environ", env)
    demo.configure_env(tmp_path / "var", tmp_path / "base", 96, gpu=True)
    assert env["GATEWAY_GENERAL_SUITE_SIZE"] == "3000"  # core + extended: decides a 0.03 drop
