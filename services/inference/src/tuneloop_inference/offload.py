"""The one way this service runs blocking work (SQL, store reads, file checks, tokenizing a long
prompt): in a worker thread, so that nothing blocks the event loop that routes requests."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def offloaded(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``fn`` made awaitable: each call runs it in a worker thread (``asyncio.to_thread``)."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    return run
