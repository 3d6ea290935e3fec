"""Fixtures of the dataset service tests: an app with its lifespan, JSONL helpers, snapshots."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tuneloop_dataset.app import create_app
from tuneloop_dataset.settings import DatasetSettings


def to_jsonl(rows: list[Any], newline: str = "\n") -> bytes:
    return (newline.join(json.dumps(r) for r in rows) + newline).encode()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def settings(data_dir: Path, database_url: str | None) -> DatasetSettings:
    """Run on both metadata backends: SQLite (default) and a real PostgreSQL database."""
    return DatasetSettings(data_dir=data_dir, log_json=False, log_level="WARNING",
                           max_line_bytes=1 << 20, database_url=database_url)


@pytest.fixture
def client(settings: DatasetSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def jsonl() -> Callable[..., bytes]:
    return to_jsonl


@pytest.fixture
def snapshot(client: TestClient, settings: DatasetSettings) -> Callable[[], dict[str, Any]]:
    """What is stored: the listed versions and every artifact file (to prove nothing changed)."""
    root = Path(settings.resolved_artifact_url())

    def take() -> dict[str, Any]:
        listing = client.get("/v1/datasets", params={"limit": 100}).json()
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        sizes = {f: os.path.getsize(root / f) for f in files}
        return {"ids": [d["id"] for d in listing["data"]], "files": sizes}

    return take


@pytest.fixture
def upload(client: TestClient) -> Callable[..., Any]:
    """POST a multipart upload of ``body`` (bytes) with form ``fields``."""

    def post(body: bytes, filename: str = "data.jsonl", ctype: str = "application/jsonl",
             **fields: Any) -> Any:
        return client.post("/v1/datasets", files={"file": (filename, body, ctype)},
                           data={k: str(v) for k, v in fields.items()})

    return post
