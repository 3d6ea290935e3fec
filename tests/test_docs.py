"""Docs that are generated must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts/gen_config_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs/configuration.md").read_text() == mod.render(), \
        "run: .venv/bin/python scripts/gen_config_docs.py"
    text = mod.render()
    for prefix in ("DATASET_", "TRAINER_", "INFERENCE_", "GATEWAY_"):
        assert f"`{prefix}PORT`" in text
