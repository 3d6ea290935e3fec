"""The dataset service's data-access boundary (:mod:`tuneloop_dataset.repository`) on a real
database, SQLite and PostgreSQL, without processes (the HTTP paths: test_api.py,
test_synthetic.py). What is checked: each check and the write it guards hold together, the
artifact move a write carries commits or fails with its row, and the pages carry each row's own
holders and counts."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator

import pytest

from tuneloop.db import Database
from tuneloop.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from tuneloop.ids import content_id, new_id
from tuneloop.settings import open_service_state
from tuneloop_dataset.app import MIGRATIONS
from tuneloop_dataset.db import DatasetRow, SynthJobRow
from tuneloop_dataset.metrics import DatasetMetrics
from tuneloop_dataset.repository import DatasetRepository, SynthRepository
from tuneloop_dataset.service import DatasetService
from tuneloop_dataset.settings import DatasetSettings
from tuneloop_dataset.synthetic import SynthService


@pytest.fixture
def db(settings: DatasetSettings) -> Iterator[Database]:
    db, _ = open_service_state(settings, MIGRATIONS)
    yield db
    db.dispose()


def _version(name: str, created_at: int) -> DatasetRow:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return DatasetRow(id=content_id("ds", digest), name=name, status="ready", format="chat",
                      created_at=created_at, counts={}, warnings=[], options={}, source={},
                      content_sha256=digest, bytes=0)


def _job(status: str = "running") -> SynthJobRow:
    return SynthJobRow(id=new_id("syn"), status=status, created_at=int(time.time()), spec={},
                       progress={}, failures=[], error=None)


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]


def test_a_version_and_its_artifacts_are_stored_together_once(db: Database) -> None:
    repo = DatasetRepository(db)
    placed: list[str] = []

    def broken() -> None:
        raise OSError("the store refused the move")

    async def run() -> None:
        first = _version("a", 1)
        assert await repo.add(first, lambda: placed.append("first"))
        # identical content again (same id): the loser stores nothing and places nothing
        assert not await repo.add(_version("a", 2), lambda: placed.append("second"))
        assert placed == ["first"]
        other = _version("b", 3)
        with pytest.raises(OSError):
            await repo.add(other, broken)
        assert await repo.find(other.id) is None  # the row went with the failed move
        assert await repo.count() == 1
        row, holders = await repo.get(first.id)
        assert (row.name, row.created_at, holders) == ("a", 1, [])

    asyncio.run(run())


def test_leases_pages_and_delete_refused_while_leased(db: Database) -> None:
    repo = DatasetRepository(db)
    moved: list[str] = []

    def broken() -> None:
        raise OSError("the store refused the move")

    async def run() -> None:
        old, new = _version("old", 1), _version("new", 2)
        for row in (old, new):
            assert await repo.add(row, lambda: None)
        assert await repo.lease(old.id, "job-1") == ["job-1"]
        assert await repo.lease(old.id, "job-1") == ["job-1"]  # idempotent
        assert sorted(await repo.lease(old.id, "eval-2")) == ["eval-2", "job-1"]
        page = await repo.page(10, 0)  # newest first, each with its own holders
        assert [(r.id, sorted(h)) for r, h in page] == [(new.id, []),
                                                        (old.id, ["eval-2", "job-1"])]
        assert [r.id for r, _ in await repo.page(1, 1)] == [old.id]

        with pytest.raises(Conflict) as refused:
            await repo.delete(old.id, lambda: moved.append(old.id))
        assert refused.value.code == "dataset_in_use" and moved == []
        assert refused.value.details["in_use_by"] == ["eval-2", "job-1"]
        with pytest.raises(NotFound) as no_lease:
            await repo.unlease(old.id, "job-9")
        assert no_lease.value.code == "lease_not_found"
        assert await repo.unlease(old.id, "job-1") == ["eval-2"]
        assert await repo.unlease(old.id, "eval-2") == []

        await repo.delete(old.id, lambda: moved.append(old.id))
        assert moved == [old.id] and await repo.find(old.id) is None
        for gone in (repo.lease(old.id, "job-3"), repo.get(old.id)):
            with pytest.raises(NotFound) as missing:
                await gone
            assert missing.value.code == "dataset_not_found"
        with pytest.raises(OSError):
            await repo.delete(new.id, broken)
        assert await repo.find(new.id) is not None  # a failed move keeps the row
        assert await repo.count() == 1

    asyncio.run(run())


def test_review_publish_checks_and_counts(db: Database) -> None:
    repo = SynthRepository(db)

    async def run() -> None:
        job = _job()
        await repo.add(job)
        for i in range(3):
            await repo.add_row(job.id, i, _messages(i), hashlib.sha256(bytes([i])).digest()[:16])
        with pytest.raises(Conflict) as running:
            await repo.accepted(job.id)
        assert running.value.code == "job_running"
        ids = [r.id for r in await repo.rows(job.id, None, 0, 10)]
        assert len(ids) == 3
        with pytest.raises(InvalidRequest) as both:
            await repo.review(job.id, [ids[0]], [ids[0]], False)
        assert both.value.code == "conflicting_review"
        with pytest.raises(InvalidRequest) as unknown:
            await repo.review(job.id, [ids[0], max(ids) + 1000], [], False)
        assert unknown.value.code == "unknown_rows"
        assert (await repo.get(job.id))[1] == {"pending": 3, "accepted": 0, "rejected": 0}

        await repo.review(job.id, [], [ids[1]], True)
        assert (await repo.get(job.id))[1] == {"pending": 0, "accepted": 2, "rejected": 1}
        assert [r.id for r in await repo.rows(job.id, "accepted", 0, 10)] == [ids[0], ids[2]]
        await repo.finish(job.id, "succeeded", None)
        assert await repo.accepted(job.id) == [_messages(0), _messages(2)]
        await repo.set_dataset(job.id, "ds-0123456789abcdef")
        assert (await repo.get(job.id))[0].dataset_id == "ds-0123456789abcdef"

        empty = _job("succeeded")
        await repo.add(empty)
        with pytest.raises(Unprocessable) as nothing:
            await repo.accepted(empty.id)
        assert nothing.value.code == "no_accepted_rows"
        counts = {j.id: c["accepted"] for j, c in await repo.page(10, 0)}
        assert counts == {job.id: 2, empty.id: 0}
        with pytest.raises(NotFound) as missing:
            await repo.rows(new_id("syn"), None, 0, 10)
        assert missing.value.code == "synthetic_job_not_found"

    asyncio.run(run())


def test_cancel_and_recover(db: Database, settings: DatasetSettings) -> None:
    """A job no task of this process runs is cancelled at once; an ended one is refused; a
    restart marks the unfinished ones failed (interrupted)."""
    store = settings.open_artifact_store()
    metrics = DatasetMetrics()
    synth = SynthService(settings, db, metrics, DatasetService(settings, db, store, metrics))

    async def run() -> None:
        orphan, queued = _job("running"), _job("queued")
        for job in (orphan, queued):
            await synth.repo.add(job)
        await synth.repo.cancel(queued.id, finish=False)  # checked only: still queued
        assert (await synth.repo.get(queued.id))[0].status == "queued"

        view = await synth.cancel(orphan.id)
        assert view["status"] == "cancelled" and view["finished_at"] is not None
        with pytest.raises(Conflict) as ended:
            await synth.cancel(orphan.id)
        assert ended.value.code == "job_finished"

        assert await synth.recover() == 1
        job, _ = await synth.repo.get(queued.id)
        assert job.status == "failed" and job.error is not None
        assert job.error["code"] == "interrupted"

    asyncio.run(run())
