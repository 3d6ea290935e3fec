"""GPU placement of vLLM engines: which GPUs each engine sees (``CUDA_VISIBLE_DEVICES``).

Every vLLM engine takes ``gpu_memory_utilization`` (its *share*) of each GPU it runs on, one GPU
per tensor-parallel rank. The allocator keeps, per GPU, the sum of the shares placed on it
under ``gpu_memory_budget``, so a deployment's blue and green engines can coexist during a
swap: on 2 GPUs, a tensor-parallel-2 deployment at 0.45 leaves room for its successor at 0.45
on the same two GPUs (0.90 <= 0.95). When a new engine does not fit, it is refused
(``insufficient_gpu_capacity``) and nothing that serves is stopped to make room: a swap never
trades a dropped request for capacity; lower ``gpu_memory_utilization`` or add GPUs.

Policy: an engine of ``n`` ranks goes on the ``n`` GPUs with the most free share (ties in pool
order), each of which must hold its share. Placements are freed when their engine stops.
Pure bookkeeping (no CUDA calls): tested on CPU.
"""

from __future__ import annotations

import shutil
import subprocess

EPS = 1e-9


class PlacementError(Exception):
    """An engine does not fit on the GPUs (``code``: insufficient_gpu_capacity | not_enough_gpus)."""

    def __init__(self, message: str, code: str = "insufficient_gpu_capacity") -> None:
        super().__init__(message)
        self.code = code


class GpuAllocator:
    def __init__(self, gpu_ids: list[str], budget: float = 0.95) -> None:
        self.gpu_ids = list(gpu_ids)
        self.budget = budget
        self.placed: dict[str, tuple[list[str], float]] = {}  # owner -> (GPUs, share on each)

    def used(self) -> dict[str, float]:
        out = {g: 0.0 for g in self.gpu_ids}
        for gpus, share in self.placed.values():
            for g in gpus:
                out[g] += share
        return out

    def _choose(self, n: int, share: float, exclude: str | None = None) -> list[str]:
        if n > len(self.gpu_ids):
            raise PlacementError(f"tensor_parallel_size {n} needs {n} GPUs; this replica has "
                                 f"{len(self.gpu_ids)} ({','.join(self.gpu_ids) or 'none'})",
                                 "not_enough_gpus")
        used = self.used()
        if exclude in self.placed:
            gpus, s = self.placed[exclude]
            for g in gpus:
                used[g] -= s
        order = sorted(self.gpu_ids, key=lambda g: (used[g], self.gpu_ids.index(g)))
        chosen = [g for g in order if used[g] + share <= self.budget + EPS][:n]
        if len(chosen) < n:
            load = ", ".join(f"GPU {g}: {used[g]:.2f}" for g in self.gpu_ids)
            raise PlacementError(f"no room for an engine of {n} GPU(s) x {share:.2f} (budget "
                                 f"{self.budget:.2f} per GPU; in use: {load}); lower "
                                 "gpu_memory_utilization, stop a deployment, or add GPUs")
        return sorted(chosen, key=self.gpu_ids.index)

    def can_place(self, n: int, share: float) -> bool:
        try:
            self._choose(n, share)
        except PlacementError:
            return False
        return True

    def check(self, n: int, share: float) -> None:
        """Raise :class:`PlacementError` if an engine of ``n`` GPUs x ``share`` does not fit now."""
        self._choose(n, share)

    def place(self, owner: str, n: int, share: float) -> list[str]:
        """Reserve ``n`` GPUs for ``owner`` (replacing an earlier placement of the same owner)."""
        gpus = self._choose(n, share, exclude=owner)
        self.placed[owner] = (gpus, share)
        return gpus

    def release(self, owner: str) -> None:
        self.placed.pop(owner, None)

    def describe(self) -> dict[str, object]:
        return {"gpus": self.gpu_ids, "budget": self.budget,
                "used": {g: round(u, 4) for g, u in self.used().items()},
                "placements": {o: {"gpus": g, "share": s} for o, (g, s) in self.placed.items()}}


def detect_gpus() -> list[str]:
    """GPU indices of this machine (``nvidia-smi -L``); empty when none can be listed."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class CpuCores:
    """Which cores each vLLM CPU engine's compute threads are bound to
    (``VLLM_CPU_OMP_THREADS_BIND``), when ``vllm_cpu_threads_bind`` is ``auto``.

    vLLM's own ``auto`` binds every engine to the same cores (all but the last): on 2 cores two
    engines share core 0, and a green engine starting beside a busy blue one was starved there
    (its worker still importing after 4 minutes; measured). So the usable cores are split into
    ``groups`` equal sets (2: blue and green of a swap) and each new engine goes to the set with
    the fewest engines (ties: the first). On 2 cores that is one core per engine; an engine's API
    process and scheduler stay unbound. Pure bookkeeping, tested without vLLM.
    """

    def __init__(self, cores: list[int], groups: int = 2) -> None:
        cores = sorted(cores)
        groups = max(1, min(groups, len(cores)))
        size = len(cores) // groups
        self.groups = [cores[i * size:(i + 1) * size] for i in range(groups)]
        self.groups[-1] += cores[groups * size:]
        self.placed: dict[str, int] = {}

    def place(self, key: str) -> str:
        """The core list (``"0"``, ``"8-15"``) for engine ``key``; idempotent per key."""
        if key not in self.placed:
            counts = [list(self.placed.values()).count(i) for i in range(len(self.groups))]
            self.placed[key] = counts.index(min(counts))
        group = self.groups[self.placed[key]]
        return f"{group[0]}-{group[-1]}" if len(group) > 1 else str(group[0])

    def release(self, key: str) -> None:
        self.placed.pop(key, None)
