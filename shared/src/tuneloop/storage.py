"""ArtifactStore: one store addressed through fsspec (local folder by default).

Keys are relative paths built from ids (``datasets/ds-1a2b.../train.parquet``), never from
user strings. Every write is atomic, so a reader never sees half an artifact:

- local folder (and any filesystem with rename): written under a temporary name, then renamed;
  a crash leaves no partial artifact behind.
- object stores (``s3://bucket/prefix``): there is no rename. One object is atomic by itself
  (a PUT or a completed multipart upload appears whole or not at all; a failed write aborts the
  upload). A folder is published object by object, then a completion marker
  (``<key>/.tuneloop-complete``, the manifest of its files) is written last: a folder without
  its marker does not exist for this store (``exists``/``list``/``get_dir`` ignore it), and
  ``put_dir`` clears such leftovers of a crash before publishing again. ``delete`` removes the
  marker first, so a folder disappears at once for readers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

COMPLETE_MARKER = ".tuneloop-complete"
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
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
        if self.url.split("://", 1)[0] in OBJECT_STORES:
            # several processes write the same bucket: never answer from a stale listing
            storage_options.setdefault("use_listings_cache", False)
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        # object stores have no rename: folders are published with a completion marker
        self.has_rename = self.is_local or not set(_protocols(self.fs)) & OBJECT_STORES
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
        """True for a stored file or a completely published folder."""
        path = self.path(key)
        if self.has_rename:
            return self.fs.exists(path)
        return self.fs.isfile(path) or self.fs.isfile(f"{path}/{COMPLETE_MARKER}")

    def ping(self) -> bool:
        """The store is reachable (readiness): the local root folder, or the bucket."""
        if self.is_local:
            return Path(self.root).is_dir()
        if not self.has_rename:
            return bool(self.fs.exists(self.root.split("/", 1)[0]))
        return bool(self.fs.exists(self.root))

    def open(self, key: str, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path(key), mode)

    def read_bytes(self, key: str) -> bytes:
        with self.open(key, "rb") as fh:
            return fh.read()

    def size(self, key: str) -> int:
        return int(self.fs.du(self.path(key))) if self.fs.isdir(self.path(key)) else int(self.fs.size(self.path(key)))

    def list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix``: files and complete folders, never temporaries."""
        base = self.path(prefix)
        if not self.has_rename:
            self.fs.invalidate_cache(base)
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        inside_published = not self.has_rename and self._inside_published(prefix)
        names = []
        for entry in entries:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".tmp-") or name == COMPLETE_MARKER:
                continue
            if (entry["type"] == "directory" and not self.has_rename and not inside_published
                    and not self.fs.isfile(f"{base}/{name}/{COMPLETE_MARKER}")):
                continue  # a folder still being published (or left by a crash)
            names.append(name)
        return sorted(names)

    def _inside_published(self, key: str) -> bool:
        """``key`` is a published folder or lies inside one (object stores)."""
        parts = check_key(key).split("/")
        return any(self.fs.isfile(f"{self.root}/{'/'.join(parts[:i])}/{COMPLETE_MARKER}")
                   for i in range(len(parts), 0, -1))

    def get_dir(self, key: str, local_dir: Path) -> Path:
        """Copy a stored folder to ``local_dir`` (no copy for local stores: returns its path)."""
        if self.is_local:
            return self.local_path(key)
        if not self.exists(key):
            raise FileNotFoundError(key)
        local_dir.mkdir(parents=True, exist_ok=True)
        base = self.path(key)
        for src in self.fs.find(base):
            rel = src[len(base) + 1:]
            if rel == COMPLETE_MARKER:
                continue
            dst = local_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(src, str(dst))
        return local_dir

    # -- atomic writes -----------------------------------------------------------------
    def _tmp(self, key: str) -> str:
        parent, _, name = self.path(key).rpartition("/")
        return f"{parent}/.tmp-{uuid.uuid4().hex[:12]}-{name}"

    @contextlib.contextmanager
    def open_atomic(self, key: str, mode: str = "wb") -> Iterator[IO[Any]]:
        """Write a file under a temporary name; rename into place only on success.

        On an object store the object is written in place: it only appears when the upload
        completes, and an error aborts it (``discard``), so nothing partial is ever visible."""
        final, tmp = self.path(key), self._tmp(key)
        if not self.has_rename:
            fh = self.fs.open(final, mode)
            try:
                yield fh
            except BaseException:
                with contextlib.suppress(Exception):
                    fh.discard()  # abort the (multipart) upload: no object is created
                    fh.closed = True  # and never let close() commit what was buffered
                raise
            fh.close()
            return
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
        if not self.has_rename:
            self._put_dir_marked(local_dir, key, move=move)
            return
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

    def _put_dir_marked(self, local_dir: Path, key: str, *, move: bool) -> None:
        """Object-store publish: every file, then the completion marker (the manifest) last."""
        final = self.path(key)
        if self.exists(key):
            raise FileExistsError(key)
        if self.fs.exists(final):  # objects without a marker: a crashed publish, never visible
            self.fs.rm(final, recursive=True)
        files = sorted(p for p in Path(local_dir).rglob("*") if not p.is_dir())
        manifest = {}
        try:
            for p in files:
                rel = p.relative_to(local_dir).as_posix()
                check_key(rel)
                self.fs.put_file(str(p), f"{final}/{rel}")
                manifest[rel] = p.stat().st_size
            self.fs.pipe_file(f"{final}/{COMPLETE_MARKER}", json.dumps(
                {"key": key, "files": manifest}, sort_keys=True).encode())
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(final, recursive=True)
            raise
        finally:
            self.fs.invalidate_cache(final)
        if move:
            shutil.rmtree(local_dir, ignore_errors=True)

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
        if not self.has_rename:
            marker = f"{path}/{COMPLETE_MARKER}"
            if self.fs.isfile(marker):
                self.fs.rm_file(marker)  # the folder is gone for readers from here on
            self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        if not self.has_rename:
            self.fs.invalidate_cache(path)


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
