"""Fixtures of the trainer tests: a real dataset service process sharing an artifact store with
real trainer processes; a callback receiver; the fake Kubernetes API server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tuneloop.testing import ServiceProcess
from trainer_testlib import FakeKube, Receiver, Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    art = root / "artifacts"
    env = {"DATASET_DATA_DIR": str(root / "dataset"), "TUNELOOP_ARTIFACT_URL": str(art),
           "HF_HUB_OFFLINE": "1"}
    ds = ServiceProcess("tuneloop_dataset", env=env, log_path=root / "dataset.log").start()
    s = Stack(root, art, ds)
    try:
        yield s
    finally:
        for t in s.trainers:
            t.stop()
        ds.stop()


@pytest.fixture(scope="module")
def small_dataset(stack: Stack, ticket_rows: list[dict[str, str]]) -> str:
    """60 ticket rows -> 48 train / 12 eval, a real dataset version."""
    return stack.dataset_from_rows(ticket_rows[:60], eval_size=12)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)
    yield r
    r.close()


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[FakeKube]:
    k = FakeKube(tmp_path)
    yield k
    k.stop()


@pytest.fixture(autouse=True)
def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

