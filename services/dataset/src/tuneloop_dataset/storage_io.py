"""Writing and reading a version's artifacts: parquet splits, the HF DatasetDict, rows pages."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tuneloop import layout
from tuneloop.storage import ArtifactStore

SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("line", pa.int64()),
])
ROW_GROUP = 1000
SPLITS = ("train", "eval")


def artifact_keys(ds_id: str) -> dict[str, str]:
    """The store keys of a version (``tuneloop.layout`` owns them)."""
    return layout.dataset_artifacts(ds_id)


class SplitWriter:
    """Streams rows into ``<dir>/<split>.parquet`` in row groups (bounded memory)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.writers = {s: pq.ParquetWriter(out_dir / f"{s}.parquet", SCHEMA) for s in SPLITS}
        self.buffers: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self.counts = {s: 0 for s in SPLITS}

    def add(self, split: str, line: int, messages: list[dict[str, str]]) -> None:
        buf = self.buffers[split]
        buf.append({"messages": messages, "line": line})
        self.counts[split] += 1
        if len(buf) >= ROW_GROUP:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if self.buffers[split]:
            self.writers[split].write_table(pa.Table.from_pylist(self.buffers[split], schema=SCHEMA))
            self.buffers[split] = []

    def close(self) -> None:
        for s in SPLITS:
            self._flush(s)
            self.writers[s].close()


_HF_LOCK = threading.Lock()


def write_hf(stage: Path, work: Path) -> None:
    """``stage/hf``: a ``DatasetDict`` (train/eval) from the parquet files, memory-mapped.

    Each split is converted row group by row group to an Arrow stream file and opened with
    ``Dataset.from_file`` (no builder, no cache folder, works for an empty split). One at a
    time: parts of ``datasets`` (tqdm's thread_map lock) are not thread-safe.
    """
    import datasets

    datasets.disable_progress_bars()
    with _HF_LOCK:
        parts = {}
        for s in SPLITS:
            arrow_path = work / f"{s}.arrow"
            pf = pq.ParquetFile(stage / f"{s}.parquet")
            if pf.metadata.num_rows == 0:  # from_file cannot open a stream without batches
                parts[s] = datasets.Dataset(SCHEMA.empty_table())
                continue
            with pa.OSFile(str(arrow_path), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as w:
                for rg in range(pf.num_row_groups):
                    w.write_table(pf.read_row_group(rg))
            parts[s] = datasets.Dataset.from_file(str(arrow_path))
        # an empty split needs an explicit single (empty) shard, or load_from_disk fails on it
        shards = {s: 1 for s, d in parts.items() if len(d) == 0}
        datasets.DatasetDict(parts).save_to_disk(str(stage / "hf"), num_shards=shards or None)


def features():
    import datasets

    return datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"),
                                   "content": datasets.Value("string")}),
        "line": datasets.Value("int64"),
    })


def iter_jsonl(path: Path) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """Rows of a normalised ``{"messages", "line"}`` JSONL file."""
    with open(path, "rb") as fh:
        for raw in fh:
            row = orjson.loads(raw)
            yield row["line"], row["messages"]


def read_rows(store: ArtifactStore, key: str, offset: int, limit: int) -> tuple[list[dict], int]:
    """A page of rows from a stored parquet split, reading only the row groups it needs."""
    with store.open(key, "rb") as fh:
        pf = pq.ParquetFile(fh)
        total = pf.metadata.num_rows
        out: list[dict] = []
        start = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            end = start + n
            if end > offset and start < offset + limit:
                table = pf.read_row_group(rg)
                lo = max(0, offset - start)
                hi = min(n, offset + limit - start)
                out.extend(table.slice(lo, hi - lo).to_pylist())
            start = end
            if start >= offset + limit:
                break
        return out, total


def iter_stored(store: ArtifactStore, key: str) -> Iterable[dict[str, Any]]:
    with store.open(key, "rb") as fh:
        pf = pq.ParquetFile(fh)
        for rg in range(pf.num_row_groups):
            yield from pf.read_row_group(rg).to_pylist()
