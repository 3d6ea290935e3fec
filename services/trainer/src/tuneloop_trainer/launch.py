"""How a job's process is launched: one process, or ``torchrun`` over N GPUs (DDP).

Pure functions shared by the local and the Kubernetes executors (and tested on CPU): the command
line, and which GPUs of a pool a job gets. With ``gpus > 1`` the same entrypoint runs once per
GPU under ``python -m torch.distributed.run --standalone --nproc_per_node=N`` (torchrun: a local
rendezvous on a free port, so concurrent jobs never collide); accelerate/Transformers' Trainer
picks the world up from the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)
and wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on CPU). Only rank 0 writes
events, checkpoints' side effects, the merged model and the result (``run_job``).
"""

from __future__ import annotations

import os

ENTRYPOINT = "tuneloop_trainer.run_job"
TORCHRUN = ["-m", "torch.distributed.run", "--standalone"]


def job_command(python: str, job_id: str, store: str, *, gpus: int = 1,
                parent_pid: int | None = None) -> list[str]:
    """``python -m tuneloop_trainer.run_job <id> --store <url>``, under torchrun when ``gpus > 1``."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1 (got {gpus})")
    args = ["-m", ENTRYPOINT, job_id, "--store", store]
    if parent_pid is not None:
        args += ["--parent-pid", str(parent_pid)]
    if gpus == 1:
        return [python, *args]
    return [python, *TORCHRUN, f"--nproc_per_node={gpus}", *args]


def pick_gpus(pool: list[str], used: set[str], n: int) -> list[str] | None:
    """The first ``n`` GPUs of ``pool`` not in ``used`` (pool order), or None if fewer are free."""
    free = [g for g in pool if g not in used]
    return free[:n] if len(free) >= n else None


def dist_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` of this process (``(0, 0, 1)`` outside torchrun)."""
    env = os.environ
    return (int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
