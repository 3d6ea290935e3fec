"""A real, throwaway PostgreSQL server for tests (``initdb`` + ``pg_ctl`` on a free port).

- :class:`PostgresServer`: one cluster in a fresh temp folder (unix socket there too), trust
  auth for the ``tuneloop`` role, durability off (``fsync=off``: a test cluster is disposable).
  As root the server runs as the ``postgres`` system user (PostgreSQL refuses to run as root).
- Fixtures: ``postgres_server`` (session), ``postgres_url`` (a fresh, empty database per test),
  ``database_url`` (parametrized over ``sqlite`` -> ``None`` and ``postgresql`` -> a fresh
  database: what service fixtures pass as ``database_url`` / ``*_DATABASE_URL``).

Binaries are found on ``PATH`` or in Debian's ``/usr/lib/postgresql/<version>/bin``; when none
are found the tests that need them skip (fail under ``TUNELOOP_REQUIRE_TOOLS=1``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .process import free_port, require_tool

ROLE = "tuneloop"


def find_bin_dir() -> Path | None:
    """Folder holding ``initdb``/``pg_ctl``/``postgres`` (PATH first, then Debian's layout)."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        real = Path(os.path.realpath(on_path)).parent
        if (real / "initdb").exists():
            return real
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A PostgreSQL cluster in a temp folder, listening on 127.0.0.1:<free port>."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # postgres refuses root: run the cluster as the postgres user
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    @property
    def base_url(self) -> str:
        return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{self.port}"

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if res.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({res.returncode}): "
                               f"{res.stdout[-1000:]}{res.stderr[-2000:]}\n{tail}")

    def start(self) -> "PostgresServer":
        self._run("initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        opts = (f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bin_dir_or_skip() -> Path:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        require_tool("pg_ctl", "PostgreSQL server binaries (scripts/ci/install-postgres.sh)")
        raise AssertionError("unreachable")  # require_tool skipped or failed
    return bin_dir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole test session."""
    with PostgresServer(_bin_dir_or_skip()) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server (dropped after the test)."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url.rsplit("/", 1)[-1])


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Metadata backend of a test: ``None`` (the SQLite default) or a fresh PostgreSQL DB."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


__all__ = ["PostgresServer", "find_bin_dir", "postgres_server", "postgres_url", "database_url"]
