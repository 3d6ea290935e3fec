"""The metadata layer on a real PostgreSQL server: every service's migrations (up, down, up
again, all four in one database as compose and Kubernetes run them, models == migrated schema),
concurrent migrations of replicas, and the trainer queue's exclusive claim under concurrency."""

from __future__ import annotations

import asyncio
import importlib
import threading
from pathlib import Path

from sqlalchemy import inspect

from tuneloop.db import Database

SERVICES = ("dataset", "trainer", "inference", "gateway")


def _service(name: str):
    app = importlib.import_module(f"tuneloop_{name}.app")
    db = importlib.import_module(f"tuneloop_{name}.db")
    return Path(app.MIGRATIONS), db.Base.metadata, f"alembic_version_{name}"


def _schema_drift(db: Database, metadata) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def own(name, type_, _parent) -> bool:  # (only this service's tables)
        return type_ != "table" or name in metadata.tables

    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_name": own})
        return compare_metadata(ctx, metadata)


def test_all_migrations_up_down_up_in_one_database(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        for name in SERVICES:
            db.migrate(*_service(name)[::2])
        tables = set(inspect(db.engine).get_table_names())
        for name in SERVICES:
            migrations, metadata, version_table = _service(name)
            assert version_table in tables
            assert set(metadata.tables) <= tables, name
            # the tables the models describe are exactly what the migrations built
            drift = _schema_drift(db, metadata)
            assert drift == [], f"{name}: models and migrations differ on PostgreSQL: {drift}"

        for name in SERVICES:  # each service's downgrade removes its tables and no other's
            migrations, metadata, version_table = _service(name)
            db.downgrade(migrations, version_table)
            left = set(inspect(db.engine).get_table_names())
            assert not set(metadata.tables) & left, name
            for other in SERVICES[SERVICES.index(name) + 1:]:
                assert set(_service(other)[1].tables) <= left, (name, other)
        for name in SERVICES:
            db.migrate(*_service(name)[::2])
        assert all(set(_service(n)[1].tables) <= set(inspect(db.engine).get_table_names())
                   for n in SERVICES)
    finally:
        db.dispose()


def test_replicas_migrating_at_once_do_not_collide(postgres_url: str) -> None:
    """Two replicas of one service start together on an empty database: one migrates, the
    other waits on the migration lock and finds the schema at head."""
    migrations, metadata, version_table = _service("inference")
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def start_replica() -> None:
        db = Database(postgres_url)
        try:
            barrier.wait()
            db.migrate(migrations, version_table)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start_replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    db = Database(postgres_url)
    assert set(metadata.tables) <= set(inspect(db.engine).get_table_names())
    db.dispose()


def test_queue_claim_is_exclusive_under_concurrency(postgres_url: str, tmp_path: Path) -> None:
    """Two supervisors (two trainer replicas) claim from one PostgreSQL queue at once: every
    queued job is claimed exactly once (FOR UPDATE SKIP LOCKED), in FIFO order per claimer."""
    from tuneloop.storage import ArtifactStore
    from tuneloop_trainer.db import Job
    from tuneloop_trainer.metrics import TrainerMetrics
    from tuneloop_trainer.service import TrainerService
    from tuneloop_trainer.settings import TrainerSettings
    from tuneloop_trainer.supervisor import Supervisor

    migrations, _, version_table = _service("trainer")
    Database(postgres_url).migrate(migrations, version_table)
    n_jobs = 40
    seed = Database(postgres_url)
    with seed.session() as s:
        for i in range(n_jobs):
            s.add(Job(id=f"job-{i:016x}", status="queued", dataset_id="ds-0", base_model="m",
                      backend="peft", hyperparameters={}, export={}, model_id=f"mv-{i:016x}",
                      progress={}, created_at=0, queued_at=1000.0 + i))
    seed.dispose()

    class _Executor:
        name = "local"

    settings = TrainerSettings(data_dir=tmp_path, max_concurrent_jobs=64)
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def claimer(who: str) -> None:
        db = Database(postgres_url)
        sup = Supervisor(TrainerService(settings, db, ArtifactStore(str(tmp_path / "art")), None),
                         _Executor(), TrainerMetrics())
        barrier.wait()
        try:
            while (got := asyncio.run(sup.queue.claim_next(10_000))) is not None:
                claimed[who].append(got[0] if isinstance(got, tuple) else got)
        finally:
            db.dispose()

    threads = [threading.Thread(target=claimer, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    everything = claimed["a"] + claimed["b"]
    assert sorted(everything) == [f"job-{i:016x}" for i in range(n_jobs)]  # each exactly once
    for ids in claimed.values():
        assert ids == sorted(ids)  # FIFO within each claimer
    check = Database(postgres_url)
    with check.session() as s:
        rows = s.query(Job).all()
        assert {r.status for r in rows} == {"running"} and {r.attempts for r in rows} == {1}
    check.dispose()
