"""Executors run one job's process: ``local`` (a child process) or ``kubernetes`` (a batch/v1 Job)."""

from __future__ import annotations

from tuneloop.storage import ArtifactStore

from ..settings import TrainerSettings
from .base import Executor, Exit


def make_executor(settings: TrainerSettings, store: ArtifactStore) -> Executor:
    if settings.executor == "kubernetes":
        from .kubernetes import KubernetesExecutor

        return KubernetesExecutor(settings, store)
    from .local import LocalExecutor

    return LocalExecutor(settings, store)


__all__ = ["Executor", "Exit", "make_executor"]
