"""Executor interface: start a job's entrypoint, poll it, cancel it, re-attach after a restart."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass
class Exit:
    """How a job's process ended: ``returncode`` 0 is success; ``reason`` explains the rest."""

    returncode: int
    reason: str | None = None
    code: str | None = None


class Executor(ABC):
    name = "base"

    @abstractmethod
    async def start(self, job_id: str, gpus: int = 1) -> dict[str, Any]:
        """Launch ``python -m tuneloop_trainer.run_job <job_id>`` (under torchrun over ``gpus``
        GPUs when more than one); return a JSON-able handle."""
        raise NotImplementedError

    @abstractmethod
    async def poll(self, job_id: str, handle: dict[str, Any]) -> Exit | None:
        """None while running; an :class:`Exit` once it ended."""
        raise NotImplementedError

    @abstractmethod
    async def cancel(self, job_id: str, handle: dict[str, Any]) -> None:
        raise NotImplementedError

    @abstractmethod
    async def recover(self, job_id: str, handle: dict[str, Any] | None) -> bool:
        """After a service restart: True if the job still runs and is re-attached; else the
        executor made sure nothing of it still runs (the job is re-queued and resumes)."""
        raise NotImplementedError

    def free_gpus(self) -> int | None:
        """GPUs free for a new job now; None when the executor does not count them (the
        cluster's scheduler does)."""
        return None

    async def close(self) -> None:  # noqa: B027 - an optional hook, nothing to do by default
        """Service shutdown."""
