"""Gateway test fixtures: real engines on tiny local models (vLLM's CPU build, the inference
service's CPU engine; ``transformers serve`` only where vLLM is not installed), and the gateway as
a real process in front of them. The engines are session-wide: every gateway test shares them."""

from __future__ import annotations

import pytest

from tuneloop.testing import ServiceProcess
from tuneloop.testing.engines import build_damaged_copy, build_tuned_copy, cpu_engine

ADMIN_KEY = "tlk-test-admin-key-0123456789abcdef"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_base_dir, ticket_rows):
    """base (tiny pretrained), tuned (fine-tuned on the tickets task), damaged (corrupted tuned)."""
    root = tmp_path_factory.mktemp("gw-models")
    tuned = build_tuned_copy(tiny_base_dir, root / "tuned", ticket_rows[:240], steps=100)
    damaged = build_damaged_copy(tuned, root / "damaged")
    return {"base": tiny_base_dir, "tuned": tuned, "damaged": damaged}


@pytest.fixture(scope="session")
def engines(tiny_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("engine-logs")
    started = {}
    try:
        for name, path in tiny_models.items():
            started[name] = cpu_engine(path, log_path=logs / f"{name}.log").start()
        yield started
    finally:
        for e in started.values():
            e.stop()


@pytest.fixture(scope="session")
def gateway(engines, tmp_path_factory):
    """The gateway process; its inference upstream is the base engine."""
    data = tmp_path_factory.mktemp("gw-data")
    env = {"TUNELOOP_DATA_DIR": str(data), "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
           "GATEWAY_INFERENCE_URL": engines["base"].url, "GATEWAY_RECONCILE_INTERVAL_S": "0",
           "GATEWAY_EVAL_MAX_TOKENS": "64", "GATEWAY_GENERAL_SUITE_SIZE": "60",
           # a dead engine costs seconds, not minutes: short backoff, down after 3 failed attempts
           "GATEWAY_EVAL_BACKOFF_MAX_S": "2", "GATEWAY_EVAL_GIVE_UP_AFTER": "3",
           "GATEWAY_EVAL_GIVE_UP_AFTER_S": "5"}
    with ServiceProcess("tuneloop_gateway", env=env, log_path=data / "gateway.log") as proc:
        proc.admin_key = ADMIN_KEY
        yield proc
