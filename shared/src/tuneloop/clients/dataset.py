"""Typed async client of the dataset service (:8001). See docs/contracts.md "Dataset service".

    async with DatasetClient("http://127.0.0.1:8001") as ds:
        d = await ds.create_from_rows(rows, name="tickets")
        await ds.lease(d.id, "job-1234")
        page = await ds.rows(d.id, split="eval", limit=200)   # a RowsPage: page.data, page.total
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any, Literal

from ..contracts import Dataset, Deleted, Lease, Page, RowsPage
from .base import ServiceClient


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
        return Dataset.model_validate(await self.post_json("/v1/datasets", body))

    async def create_from_path(self, path: str, **options: Any) -> Dataset:
        """Import a file under the dataset service's import root (DATASET_IMPORT_ROOT)."""
        body = {"source": {"path": path}, **_options(**options)}
        return Dataset.model_validate(await self.post_json("/v1/datasets", body))

    async def create_from_hub(self, hf_dataset: str, split: str = "train", **options: Any) -> Dataset:
        body = {"source": {"hf_dataset": hf_dataset, "split": split}, **_options(**options)}
        return Dataset.model_validate(await self.post_json("/v1/datasets", body))

    async def upload_file(self, path: str | Path, *, eval_path: str | Path | None = None,
                          **options: Any) -> Dataset:
        """Multipart upload of a local JSONL file (streamed from disk by httpx)."""
        path = Path(path)
        data = {k: str(v) for k, v in _options(**options).items()}
        # httpx streams the multipart body from these handles (local-disk reads, 64 KiB at a time)
        with open(path, "rb") as fh:  # noqa: ASYNC230
            files: dict[str, Any] = {"file": (path.name, fh, "application/jsonl")}
            if eval_path is None:
                resp = await self.request("POST", "/v1/datasets", files=files, data=data)
                return Dataset.model_validate(resp.json())
            with open(eval_path, "rb") as ev:  # noqa: ASYNC230
                files["eval_file"] = (Path(eval_path).name, ev, "application/jsonl")
                resp = await self.request("POST", "/v1/datasets", files=files, data=data)
                return Dataset.model_validate(resp.json())

    async def create_example(self, n: int = 500, example_seed: int = 42, **options: Any) -> Dataset:
        """Generate and store the built-in support-ticket task."""
        body = {"n": n, "example_seed": example_seed, **_options(**options)}
        return Dataset.model_validate(
            await self.post_json("/v1/datasets/examples/support-tickets", body))

    async def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(await self.get_json(f"/v1/datasets/{dataset_id}"))

    async def list(self, limit: int = 20, offset: int = 0) -> Page[Dataset]:
        page = await self.get_json("/v1/datasets", params={"limit": limit, "offset": offset})
        return Page[Dataset].model_validate(page)

    async def rows(self, dataset_id: str, split: Literal["train", "eval"] = "train",
                   offset: int = 0, limit: int = 100) -> RowsPage:
        page = await self.get_json(f"/v1/datasets/{dataset_id}/rows",
                                   params={"split": split, "offset": offset, "limit": limit})
        return RowsPage.model_validate(page)

    async def all_rows(self, dataset_id: str, split: Literal["train", "eval"] = "train",
                       page: int = 1000, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        """The rows of a split in order (pages through ``rows``), at most ``limit`` of them."""
        out: list[dict[str, Any]] = []
        while limit is None or len(out) < limit:
            size = page if limit is None else min(page, limit - len(out))
            p = await self.rows(dataset_id, split, offset=len(out), limit=size)
            out.extend(p.data)
            if not p.has_more or not p.data:
                break
        return out

    async def report(self, dataset_id: str) -> dict[str, Any]:
        return await self.get_json(f"/v1/datasets/{dataset_id}/report")

    async def report_text(self, dataset_id: str) -> str:
        return (await self.request("GET", f"/v1/datasets/{dataset_id}/report",
                                   params={"format": "text"})).text

    async def lease(self, dataset_id: str, holder: str) -> Lease:
        """Mark the version as used by ``holder`` (e.g. a job id): delete is refused (409)."""
        resp = await self.request("PUT", f"/v1/datasets/{dataset_id}/leases/{holder}")
        return Lease.model_validate(resp.json())

    async def unlease(self, dataset_id: str, holder: str) -> Lease:
        resp = await self.request("DELETE", f"/v1/datasets/{dataset_id}/leases/{holder}")
        return Lease.model_validate(resp.json())

    async def delete(self, dataset_id: str) -> Deleted:
        return Deleted.model_validate((await self.request("DELETE", f"/v1/datasets/{dataset_id}")).json())
