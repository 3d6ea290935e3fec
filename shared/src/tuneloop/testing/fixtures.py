"""pytest plugin with session fixtures shared by every test directory (loaded via pytest.ini).

- ``tiny_base_dir``: a tiny Llama base, pretrained briefly on ticket text (LoRA can learn on it)
- ``tiny_random_dir``: a tiny Llama base with purely random weights (fast; for plumbing tests)
- ``ticket_rows``: 300 rows of the built-in support-ticket task
- ``postgres_server`` / ``postgres_url`` / ``database_url`` (sqlite | postgresql): a real
  throwaway PostgreSQL server (:mod:`tuneloop.testing.postgres`)
- ``s3_server`` / ``s3_artifact_url`` / ``s3_store_env``: a real local S3-compatible server
  (:mod:`tuneloop.testing.s3`)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .postgres import database_url, postgres_server, postgres_url  # noqa: F401 (fixtures)
from .s3 import s3_artifact_url, s3_server, s3_storage_options, s3_store_env  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Explicitly off for the suite's own service processes and apps (each test starts the service
# it talks to); the tests of the service token and four_services() turn it on with a token.
os.environ.setdefault("TUNELOOP_SERVICE_AUTH", "false")


@pytest.fixture(scope="session")
def tiny_random_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-random") / "model")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-base") / "model", hidden=96,
                            pretrain_steps=150)


@pytest.fixture(scope="session")
def ticket_rows() -> list[dict[str, str]]:
    from ..examples.support_tickets import generate

    return generate(300, seed=1)
