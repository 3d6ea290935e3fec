"""The data-access boundary, checked in the source: blocking work is awaited through
``tuneloop.offload`` (``offload`` / ``offloaded``: one spelling, AnyIO's thread pool), routers
get their services as dependencies (``api/deps.py``), never through ``request.app.state``.
Static: reads files only.

Covered: ``shared/`` and all four services. One stated exception: the gateway's OpenAI
generation routes (``api/proxy.py``) read the app state directly, because a dependency is solved
per request and dependency solving was a third of that path's CPU (``bench/serve_load.py
--profile``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "services/gateway/src/tuneloop_gateway"
CHECKED = sorted([
    *(ROOT / "shared/src/tuneloop").rglob("*.py"),
    *(ROOT / "services/dataset/src/tuneloop_dataset").rglob("*.py"),
    *(ROOT / "services/trainer/src/tuneloop_trainer").rglob("*.py"),
    *GATEWAY.rglob("*.py"),
    *(ROOT / "services/inference/src/tuneloop_inference").rglob("*.py"),
])
# the hot path's direct reads (see the module doc): _ups and _generate's settings and captures
STATE_ALLOWED = {GATEWAY / "api" / "proxy.py": 3}
OTHER_OFFLOADS = re.compile(r"\b(asyncio\.to_thread|anyio\.to_thread|to_thread\.run_sync|"
                            r"run_in_threadpool)\b")
STATE = re.compile(r"\brequest\.app\.state\b")


def _code(path: Path) -> list[tuple[int, str]]:
    """Every numbered line, comments and docstrings included: they must not advertise another
    spelling either (offload.py, which says what it wraps, is skipped)."""
    return list(enumerate(path.read_text().splitlines(), 1))


@pytest.mark.parametrize("path", [p for p in CHECKED if p.exists()],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_one_offload_spelling(path: Path) -> None:
    if path.name == "offload.py":
        return
    found = [f"{n}: {line.strip()}" for n, line in _code(path) if OTHER_OFFLOADS.search(line)]
    assert not found, "use tuneloop.offload.offload instead:\n" + "\n".join(found)


@pytest.mark.parametrize("path", [p for p in CHECKED if p.exists() and p.parent.name == "api"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_routers_get_services_injected(path: Path) -> None:
    if path.name == "deps.py":  # the providers themselves
        return
    found = [f"{n}: {line.strip()}" for n, line in _code(path) if STATE.search(line)]
    assert len(found) <= STATE_ALLOWED.get(path, 0), \
        "declare Annotated[..., from_state(name)] in api/deps.py:\n" + "\n".join(found)


def test_the_checks_see_the_files() -> None:
    """A moved package must not silently empty the lists above."""
    assert sum(p.parent.name == "api" for p in CHECKED) >= 20
    assert len(CHECKED) >= 150


# Each service's data access: SQL (a session, a query, SQLAlchemy itself) only in its
# repository module(s), its tables (db.py) and its migrations. The trainer's job process has no
# database; an HF ``Dataset.select(`` there is no query, hence the look-behind.
SQL = re.compile(r"\.session\(\)|(?<!\.)\bselect\(|\bsqlalchemy\b")
DATASET = ROOT / "services/dataset/src/tuneloop_dataset"
TRAINER = ROOT / "services/trainer/src/tuneloop_trainer"
DATA_ACCESS = {  # package -> the only places its SQL may live
    GATEWAY: ("repository", "migrations", "db.py"),
    DATASET: ("repository.py", "db.py", "migrations"),
    TRAINER: ("repository.py", "jobqueue.py", "db.py", "migrations"),
}


def _outside_data_access() -> list[tuple[Path, Path]]:
    out = []
    for package, names in DATA_ACCESS.items():
        allowed = [package / n for n in names]
        out += [(package, p) for p in sorted(package.rglob("*.py"))
                if not any(p == d or d in p.parents for d in allowed)]
    return out


@pytest.mark.parametrize("package,path", _outside_data_access(),
                         ids=lambda v: str(v.relative_to(ROOT)))
def test_sql_only_in_the_services_repository(package: Path, path: Path) -> None:
    found = [f"{n}: {line.strip()}" for n, line in _code(path) if SQL.search(line)]
    assert not found, (f"move it to {package.name}'s repository ({', '.join(DATA_ACCESS[package])})"
                       ":\n" + "\n".join(found))
