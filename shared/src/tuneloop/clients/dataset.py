"""Typed async client of the dataset service (:8001). See docs/contracts.md "Dataset service".

    async with DatasetClient("http://127.0.0.1:8001") as ds:
        d = await ds.create_from_rows(rows, name="tickets")
        await ds.lease(d["id"], "job-1234")
        page = await ds.rows(d["id"], split="eval", limit=200)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict

from .base import ServiceClient


class DatasetCounts(TypedDict):
    total: int
    valid: int
    invalid: int
    train: int
    eval: int


class Dataset(TypedDict, total=False):
    id: str
    object: str
    name: str
    status: str
    created_at: int
    counts: DatasetCounts
    format: str
    warnings: list[dict[str, str]]
    artifacts: dict[str, str]
    artifact_url: str
    in_use_by: list[str]


class RowsPage(TypedDict):
    object: str
    data: list[dict[str, Any]]
    has_more: bool
    total: int
    split: str
    offset: int
    limit: int


def _options(**opts: Any) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class DatasetClient(ServiceClient):
    """One client per process (opened in the lifespan); errors raise ``ServiceError``."""

    service = "dataset"

    async def create_from_rows(self, rows: list[dict[str, Any]], *,
                               eval_rows: list[dict[str, Any]] | None = None,
                               **options: Any) -> Dataset:
        """Upload rows (article or chat form). Options: name, on_invalid, eval_size,
        eval_fraction, seed, max_seq_length, tokenizer."""
        body = {"rows": rows, **_options(eval_rows=eval_rows, **options)}
        return await self.post_json("/v1/datasets", body)

    async def create_from_path(self, path: str, **options: Any) -> Dataset:
        """Import a file under the dataset service's import root (DATASET_IMPORT_ROOT)."""
        return await self.post_json("/v1/datasets", {"source": {"path": path}, **_options(**options)})

    async def create_from_hub(self, hf_dataset: str, split: str = "train", **options: Any) -> Dataset:
        body = {"source": {"hf_dataset": hf_dataset, "split": split}, **_options(**options)}
        return await self.post_json("/v1/datasets", body)

    async def upload_file(self, path: str | Path, *, eval_path: str | Path | None = None,
                          **options: Any) -> Dataset:
        """Multipart upload of a local JSONL file (streamed from disk by httpx)."""
        path = Path(path)
        with open(path, "rb") as fh:
            files: dict[str, Any] = {"file": (path.name, fh, "application/jsonl")}
            if eval_path is None:
                return (await self.request("POST", "/v1/datasets", files=files,
                                           data={k: str(v) for k, v in _options(**options).items()})).json()
            with open(eval_path, "rb") as ev:
                files["eval_file"] = (Path(eval_path).name, ev, "application/jsonl")
                return (await self.request("POST", "/v1/datasets", files=files,
                                           data={k: str(v) for k, v in _options(**options).items()})).json()

    async def create_example(self, n: int = 500, example_seed: int = 42, **options: Any) -> Dataset:
        """Generate and store the built-in support-ticket task."""
        body = {"n": n, "example_seed": example_seed, **_options(**options)}
        return await self.post_json("/v1/datasets/examples/support-tickets", body)

    async def get(self, dataset_id: str) -> Dataset:
        return await self.get_json(f"/v1/datasets/{dataset_id}")

    async def list(self, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        return await self.get_json("/v1/datasets", params={"limit": limit, "offset": offset})

    async def rows(self, dataset_id: str, split: Literal["train", "eval"] = "train",
                   offset: int = 0, limit: int = 100) -> RowsPage:
        return await self.get_json(f"/v1/datasets/{dataset_id}/rows",
                                   params={"split": split, "offset": offset, "limit": limit})

    async def all_rows(self, dataset_id: str, split: Literal["train", "eval"] = "train",
                       page: int = 1000) -> list[dict[str, Any]]:
        """Every row of a split (pages through ``rows``)."""
        out: list[dict[str, Any]] = []
        while True:
            p = await self.rows(dataset_id, split, offset=len(out), limit=page)
            out.extend(p["data"])
            if not p["has_more"] or not p["data"]:
                return out

    async def report(self, dataset_id: str) -> dict[str, Any]:
        return await self.get_json(f"/v1/datasets/{dataset_id}/report")

    async def report_text(self, dataset_id: str) -> str:
        return (await self.request("GET", f"/v1/datasets/{dataset_id}/report",
                                   params={"format": "text"})).text

    async def lease(self, dataset_id: str, holder: str) -> dict[str, Any]:
        """Mark the version as used by ``holder`` (e.g. a job id): delete is refused (409)."""
        return (await self.request("PUT", f"/v1/datasets/{dataset_id}/leases/{holder}")).json()

    async def unlease(self, dataset_id: str, holder: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/v1/datasets/{dataset_id}/leases/{holder}")).json()

    async def delete(self, dataset_id: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/v1/datasets/{dataset_id}")).json()
