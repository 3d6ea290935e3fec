"""The one way the services run blocking work from ``async def`` code: :func:`offload`.

SQL through the synchronous SQLAlchemy session, artifact-store reads and writes, files, a
tokenizer: each such call is awaited as ``await offload(fn, *args, **kwargs)`` and runs in a
worker thread, so nothing blocks the event loop that serves requests. The threads are AnyIO's
(the pool Starlette runs sync endpoints and dependencies in: at most 40 at once, its default
limiter), not the event loop's default executor, which holds only ``cpu + 4`` threads: a few
long calls (an ingest, a Hub push) there would queue every quick database read behind them.
The caller's context variables (the request id of the logs) travel into the thread.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from anyio import to_thread

P = ParamSpec("P")
R = TypeVar("R")


async def offload(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` in a worker thread, awaited."""
    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def offloaded(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``fn`` made awaitable (a repository's blocking method as an ``async`` one): each call
    runs it through :func:`offload`."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await offload(fn, *args, **kwargs)

    return run
