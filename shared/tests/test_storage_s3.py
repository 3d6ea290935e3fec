"""The ArtifactStore contract, on a local folder and on a real S3-compatible server (moto)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tuneloop.storage import COMPLETE_MARKER, ArtifactStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "artifacts"))
    url = request.getfixturevalue("s3_artifact_url")
    return ArtifactStore(url, **request.getfixturevalue("s3_storage_options"))


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_put_get_exists_list_delete(store: ArtifactStore, tmp_path: Path) -> None:
    assert store.ping()
    assert not store.exists("datasets/ds-1/report.json")
    assert store.list("datasets") == []
    store.write_bytes("datasets/ds-1/report.json", b'{"ok": true}')
    assert store.exists("datasets/ds-1/report.json")
    assert store.read_bytes("datasets/ds-1/report.json") == b'{"ok": true}'
    assert store.size("datasets/ds-1/report.json") == 12

    src = _tree(tmp_path / "stage", {"a.txt": b"A", "sub/b.bin": b"\x00" * 10})
    store.put_dir(src, "models/mv-1")
    assert src.exists()  # copy, not move
    assert store.exists("models/mv-1")
    assert store.list("models") == ["mv-1"]
    assert store.list("models/mv-1") == ["a.txt", "sub"]
    assert store.read_bytes("models/mv-1/sub/b.bin") == b"\x00" * 10
    with pytest.raises(FileExistsError):  # immutable once written
        store.put_dir(src, "models/mv-1")

    got = store.get_dir("models/mv-1", tmp_path / "got")
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == \
        ["a.txt", "sub/b.bin"]  # the completion marker is the store's, never the artifact's

    store.delete("models/mv-1")
    assert not store.exists("models/mv-1")
    assert store.list("models") == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("models/mv-1/a.txt")
    store.delete("models/mv-1")  # idempotent


def test_move_publishes_and_consumes_the_stage(store: ArtifactStore) -> None:
    stage = store.staging_dir("datasets/ds-2")
    _tree(stage, {"train.parquet": b"p" * 100, "hf/dataset_dict.json": b"{}"})
    store.put_dir(stage, "datasets/ds-2", move=True)
    assert not stage.exists()
    assert store.list("datasets") == ["ds-2"]
    assert store.read_bytes("datasets/ds-2/hf/dataset_dict.json") == b"{}"


def test_failed_write_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(RuntimeError), store.open_atomic("jobs/j1/log.txt") as fh:
        fh.write(b"half a file")
        raise RuntimeError("crash mid-write")
    assert not store.exists("jobs/j1/log.txt")
    assert "log.txt" not in store.list("jobs/j1")


def test_failed_dir_publish_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "stage", {"a.txt": b"A", "b.txt": b"B"})
    (src / "zz-broken").symlink_to(tmp_path / "missing")  # unreadable: fails after a, b
    with pytest.raises(OSError):
        store.put_dir(src, "models/mv-bad")
    assert not store.exists("models/mv-bad")
    assert store.list("models") == []


def test_incomplete_folder_is_invisible_then_replaced(s3_artifact_url: str, s3_storage_options,
                                                      tmp_path: Path) -> None:
    """S3 has no rename: what a crash mid-publish leaves (objects, no marker) is not an
    artifact for readers, and publishing the key again replaces it."""
    store = ArtifactStore(s3_artifact_url, **s3_storage_options)
    assert not store.has_rename
    store.fs.pipe_file(store.path("models/mv-3") + "/a.txt", b"stale")
    assert not store.exists("models/mv-3")
    assert store.list("models") == []
    with pytest.raises(FileNotFoundError):
        store.get_dir("models/mv-3", tmp_path / "x")
    store.put_dir(_tree(tmp_path / "stage", {"b.txt": b"fresh"}), "models/mv-3")
    assert store.list("models/mv-3") == ["b.txt"]
    assert store.fs.isfile(store.path("models/mv-3") + "/" + COMPLETE_MARKER)


def test_large_file_streams_in_chunks(store: ArtifactStore, tmp_path: Path) -> None:
    """A 24 MiB file (several multipart parts on S3) round-trips through put_file/open."""
    big = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(big, "wb") as fh:
        for _ in range(24):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            fh.write(chunk)
    store.put_file(big, "files/big.bin")
    assert store.size("files/big.bin") == 24 << 20
    h2 = hashlib.sha256()
    with store.open("files/big.bin") as fh:
        while chunk := fh.read(1 << 20):
            h2.update(chunk)
    assert h2.hexdigest() == h.hexdigest()


def test_settings_build_an_s3_store(s3_server, s3_artifact_url: str, monkeypatch) -> None:
    """The S3 settings (env, TUNELOOP_ fallback) reach the store: a service opens the bucket."""
    from tuneloop.settings import ServiceSettings

    for k, v in s3_server.env_for(s3_artifact_url).items():
        monkeypatch.setenv(k, v)
    store = ServiceSettings().open_artifact_store()
    assert store.url == s3_artifact_url and not store.has_rename
    store.write_bytes("x/y.txt", b"hello")
    assert ArtifactStore(s3_artifact_url, **s3_server.storage_options()).read_bytes("x/y.txt") \
        == b"hello"
