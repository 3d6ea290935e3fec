"""The real service process on a real port: the curl flow, concurrent identical uploads, restart."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import datasets
import httpx
import pytest

from tuneloop.examples.support_tickets import write_jsonl
from tuneloop.testing import ServiceProcess


@pytest.fixture
def service(tmp_path: Path, database_url: str | None):
    """The real process on both metadata backends (SQLite default, real PostgreSQL)."""
    env = {"DATASET_DATA_DIR": str(tmp_path / "var"), "DATASET_LOG_JSON": "true",
           "HF_HUB_OFFLINE": "1", **({"DATASET_DATABASE_URL": database_url} if database_url else {})}
    proc = ServiceProcess("tuneloop_dataset", env=env, log_path=tmp_path / "dataset.log")
    with proc:
        yield proc


def test_flow_concurrency_and_restart(service: ServiceProcess, tmp_path: Path):
    data = tmp_path / "tickets.jsonl"
    write_jsonl(str(data), 300, seed=21)
    url = service.url
    ready = httpx.get(f"{url}/ready").json()
    assert ready["status"] == "ready" and ready["checks"] == {"database": True, "artifact_store": True}

    # concurrent uploads of identical content: one version, one 201, no corruption
    def post() -> httpx.Response:
        with open(data, "rb") as fh:
            return httpx.post(f"{url}/v1/datasets", files={"file": ("tickets.jsonl", fh, "application/jsonl")},
                              data={"name": "tickets"}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: post(), range(6)))
    assert sorted(r.status_code for r in results) == [200] * 5 + [201], [r.text for r in results]
    ids = {r.json()["id"] for r in results}
    assert len(ids) == 1
    ds = ids.pop()
    store = tmp_path / "var" / "artifacts" / "datasets"
    assert [p.name for p in store.iterdir()] == [ds]
    dd = datasets.load_from_disk(str(store / ds / "hf"))
    assert len(dd["train"]) + len(dd["eval"]) == 300

    # report (JSON + text), rows, lease, refused delete
    report = httpx.get(f"{url}/v1/datasets/{ds}/report").json()
    assert report["counts"]["valid"] == 300
    text = httpx.get(f"{url}/v1/datasets/{ds}/report", params={"format": "text"}).text
    assert f"Dataset {ds} (tickets)" in text
    rows = httpx.get(f"{url}/v1/datasets/{ds}/rows", params={"split": "eval", "limit": 5}).json()
    assert len(rows["data"]) == 5
    assert httpx.put(f"{url}/v1/datasets/{ds}/leases/job-42").status_code == 200
    assert httpx.delete(f"{url}/v1/datasets/{ds}").json()["error"]["code"] == "dataset_in_use"

    # import from the import root (default <data_dir>/imports)
    imports = tmp_path / "var" / "imports"
    write_jsonl(str(imports / "more.jsonl"), 50, seed=22)
    imp = httpx.post(f"{url}/v1/datasets", json={"source": {"path": "more.jsonl"}}, timeout=60)
    assert imp.status_code == 201, imp.text

    # restart: everything is still there
    service.restart()
    after = httpx.get(f"{url}/v1/datasets/{ds}").json()
    assert after["in_use_by"] == ["job-42"] and after["counts"]["valid"] == 300
    assert httpx.get(f"{url}/v1/datasets/{ds}/report").json() == report
    assert httpx.get(f"{url}/v1/datasets/{ds}/rows", params={"split": "eval", "limit": 5}).json() == rows
    listing = httpx.get(f"{url}/v1/datasets").json()
    assert {d["id"] for d in listing["data"]} == {ds, imp.json()["id"]}
    again = post()
    assert again.status_code == 200 and again.json()["id"] == ds
    metrics = httpx.get(f"{url}/metrics").text
    assert "tuneloop_dataset_datasets_stored 2.0" in metrics


def test_kill_during_nothing_leaves_no_temp_files(service: ServiceProcess, tmp_path: Path):
    """A hard kill then a start cleans leftovers (work folders, staging dirs)."""
    leftovers = tmp_path / "var" / "tmp" / "dataset" / "ingest-crashed"
    leftovers.mkdir(parents=True)
    staging = tmp_path / "var" / "artifacts" / "datasets" / ".tmp-abc-ds-1"
    staging.mkdir(parents=True)
    service.kill()
    service.start()
    assert not leftovers.exists() and not staging.exists()


def test_dataset_client_against_the_real_process(service: ServiceProcess, tmp_path: Path):
    """The typed client other services use, end to end."""
    import asyncio

    from tuneloop.clients import ServiceError
    from tuneloop.clients.dataset import DatasetClient
    from tuneloop.examples.support_tickets import generate

    path = tmp_path / "t.jsonl"
    write_jsonl(str(path), 40, seed=23)

    async def flow() -> None:
        async with DatasetClient(service.url) as ds:
            created = await ds.create_from_rows(generate(30, seed=24), name="client", eval_size=5)
            assert created["counts"]["eval"] == 5 and created["name"] == "client"
            assert (await ds.get(created["id"]))["id"] == created["id"]
            up = await ds.upload_file(path, name="file")
            assert up["counts"]["valid"] == 40
            train = await ds.all_rows(created["id"], "train", page=7)
            assert len(train) == 25 and [r["line"] for r in train] == sorted(r["line"] for r in train)
            assert (await ds.rows(created["id"], "eval"))["total"] == 5
            assert (await ds.report(created["id"]))["counts"]["valid"] == 30
            assert created["id"] in await ds.report_text(created["id"])
            assert (await ds.lease(created["id"], "job-9"))["in_use_by"] == ["job-9"]
            try:
                await ds.delete(created["id"])
                raise AssertionError("delete of a leased dataset succeeded")
            except ServiceError as exc:
                assert exc.status == 409 and exc.code == "dataset_in_use"
            await ds.unlease(created["id"], "job-9")
            assert (await ds.delete(created["id"]))["deleted"] is True
            try:
                await ds.create_from_rows([{"instruction": "x"}])
                raise AssertionError("invalid rows accepted")
            except ServiceError as exc:
                assert exc.status == 422 and exc.code == "dataset_invalid"
                assert exc.details["errors"][0]["field"] == "output"
            ex = await ds.create_example(n=25, example_seed=1)
            assert ex["counts"]["valid"] == 25
            listing = await ds.list()
            assert {d["id"] for d in listing["data"]} == {up["id"], ex["id"]}

    asyncio.run(flow())


def test_concurrent_uploads_of_different_content(service: ServiceProcess):
    """Builds run in parallel threads (a datasets/tqdm race once turned one into a 500)."""
    from tuneloop.examples.support_tickets import generate

    def post(seed: int) -> httpx.Response:
        return httpx.post(f"{service.url}/v1/datasets", json={"rows": generate(60, seed=seed)},
                          timeout=120)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(post, range(100, 104)))
    assert [r.status_code for r in results] == [201] * 4, [r.text[:300] for r in results]
    assert len({r.json()["id"] for r in results}) == 4
