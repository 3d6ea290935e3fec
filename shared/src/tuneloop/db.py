"""Metadata storage: SQLAlchemy 2 engine/sessions and Alembic migrations per service.

SQLite is the embedded default (WAL, foreign keys on); the same code runs on PostgreSQL.
Each service owns its tables and its own Alembic version table, so services may share one
PostgreSQL database in a cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic.config import Config

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict = {"echo": echo, "future": True}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error."""
        with self.sessionmaker() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

    def alembic_config(self, migrations_dir: Path, version_table: str) -> Config:
        """The Alembic config of one service's migrations on this database."""
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["connection_engine"] = self.engine
        cfg.attributes["version_table"] = version_table
        return cfg

    def migrate(self, migrations_dir: Path, version_table: str, revision: str = "head") -> None:
        """Upgrade this database to ``revision`` (head) with the service's Alembic scripts.

        On PostgreSQL several replicas may start at once: a transaction-level advisory lock
        (keyed by the version table) makes them migrate one after the other; on SQLite the
        worker processes of one service do, through a lock file in their run directory."""
        from alembic import command

        from .workers import host_lock

        cfg = self.alembic_config(migrations_dir, version_table)
        if self.engine.dialect.name != "postgresql":
            with host_lock(f"migrate-{version_table}"):  # the workers of one service, at once
                command.upgrade(cfg, revision)
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%(k)s))",
                                 {"k": f"tuneloop-migrate:{version_table}"})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def downgrade(self, migrations_dir: Path, version_table: str, revision: str = "base") -> None:
        """Downgrade this database to ``revision`` (operators rolling back a release; tests)."""
        from alembic import command

        command.downgrade(self.alembic_config(migrations_dir, version_table), revision)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def run_alembic_env(target_metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py`` (online mode on the given engine)."""
    from alembic import context

    cfg = context.config
    version_table = cfg.attributes.get("version_table", "alembic_version")
    connection = cfg.attributes.get("connection")
    if connection is not None:  # the caller's transaction (it holds the migration lock)
        _run_migrations(context, connection, target_metadata, version_table)
        return
    engine = cfg.attributes.get("connection_engine")
    if engine is None:
        engine = create_engine(cfg.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        _run_migrations(context, connection, target_metadata, version_table)


def _run_migrations(context: Any, connection: Any, target_metadata: MetaData,
                    version_table: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=version_table,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
