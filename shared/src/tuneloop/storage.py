"""ArtifactStore: one store addressed through fsspec (local folder by default).

Keys are relative paths built from ids (``datasets/ds-1a2b.../train.parquet``), never from
user strings. Every write is atomic: written under a temporary name, then renamed, so a
reader never sees half a file and a crash leaves no partial artifact behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def check_key(key: str) -> str:
    """Reject keys that could escape the store (``..``, absolute paths, odd characters)."""
    if not _KEY_RE.match(key) or any(part in ("..", ".") for part in key.split("/")):
        raise ValueError(f"invalid artifact key: {key!r}")
    return key


class ArtifactStore:
    """Atomic, id-addressed artifact storage over any fsspec URL."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    # -- paths -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """Filesystem path of ``key`` inside the store (for fsspec calls)."""
        return f"{self.root}/{check_key(key)}"

    def uri(self, key: str) -> str:
        """Full URL of ``key`` (what other services are given)."""
        return f"{self.url}/{check_key(key)}"

    def local_path(self, key: str) -> Path:
        """Local path of ``key``; only for local stores (raises otherwise)."""
        if not self.is_local:
            raise RuntimeError("artifact store is not local; use open()/get_dir()")
        return Path(self.path(key))

    # -- reads -------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def open(self, key: str, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path(key), mode)

    def read_bytes(self, key: str) -> bytes:
        with self.open(key, "rb") as fh:
            return fh.read()

    def size(self, key: str) -> int:
        return int(self.fs.du(self.path(key))) if self.fs.isdir(self.path(key)) else int(self.fs.size(self.path(key)))

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))

    def get_dir(self, key: str, local_dir: Path) -> Path:
        """Copy a stored folder to ``local_dir`` (no copy for local stores: returns its path)."""
        if self.is_local:
            return self.local_path(key)
        local_dir.mkdir(parents=True, exist_ok=True)
        self.fs.get(self.path(key) + "/", str(local_dir), recursive=True)
        return local_dir

    # -- atomic writes -----------------------------------------------------------------
    def _tmp(self, key: str) -> str:
        parent, _, name = self.path(key).rpartition("/")
        return f"{parent}/.tmp-{uuid.uuid4().hex[:12]}-{name}"

    @contextlib.contextmanager
    def open_atomic(self, key: str, mode: str = "wb") -> Iterator[IO[Any]]:
        """Write a file under a temporary name; rename into place only on success."""
        final, tmp = self.path(key), self._tmp(key)
        self.fs.makedirs(final.rpartition("/")[0], exist_ok=True)
        try:
            with self.fs.open(tmp, mode) as fh:
                yield fh
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_atomic(key, "wb") as fh:
            fh.write(data)

    def put_file(self, local: Path, key: str) -> None:
        with open(local, "rb") as src, self.open_atomic(key, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def put_dir(self, local_dir: Path, key: str, *, move: bool = False) -> None:
        """Publish a whole folder atomically: upload to a temp folder, then rename.

        Fails with FileExistsError if ``key`` exists (artifacts are immutable).
        """
        final, tmp = self.path(key), self._tmp(key)
        if self.fs.exists(final):
            raise FileExistsError(key)
        self.fs.makedirs(final.rpartition("/")[0], exist_ok=True)
        try:
            if self.is_local and move:
                shutil.move(str(local_dir), tmp)
            elif self.is_local:
                shutil.copytree(local_dir, tmp)
            else:
                self.fs.put(str(local_dir), tmp, recursive=True)
            if self.is_local:
                os.rename(tmp, final)  # atomic on POSIX; fails if final appeared meanwhile
            else:
                self.fs.mv(tmp, final, recursive=True)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp, recursive=True)
            raise

    def staging_dir(self, key: str) -> Path:
        """A fresh local folder *inside* the store's filesystem for building an artifact
        that will be published with ``put_dir(..., move=True)`` (rename, no copy)."""
        if self.is_local:
            path = Path(self._tmp(key))
            path.mkdir(parents=True)
            return path
        import tempfile

        return Path(tempfile.mkdtemp(prefix="tuneloop-stage-"))

    def delete(self, key: str) -> None:
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
