"""Local executor: each job in its own process (or torchrun group), supervised by the service.

A job with ``gpus: N > 1`` runs under torchrun (:mod:`..launch`); with a GPU pool
(``TRAINER_GPU_IDS``) it gets N GPUs of its own through ``CUDA_VISIBLE_DEVICES``.

The child runs in its own session (a cancel kills its whole process group) and exits by itself
if the service dies (``--parent-pid``). A crash, an OOM kill or a signal fails only that job.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tuneloop import layout
from tuneloop.offload import offload
from tuneloop.storage import ArtifactStore

from ..launch import job_command, pick_gpus
from ..settings import TrainerSettings
from .base import Executor, Exit

_SIGNAL_HINT = {signal.SIGKILL: "killed (SIGKILL: out of memory or killed by an operator)",
                signal.SIGTERM: "terminated (SIGTERM)", signal.SIGSEGV: "crashed (SIGSEGV)",
                signal.SIGABRT: "aborted (SIGABRT)"}


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, settings: TrainerSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self.procs: dict[str, subprocess.Popen] = {}
        self.kill_at: dict[str, float] = {}
        self.gpu_of: dict[str, list[str]] = {}  # job -> the GPUs it holds (no GPU is shared)

    def log_path(self, job_id: str) -> Path:
        """stdout/stderr of the job: in the store's job folder when the store is a local folder,
        else in the service's data dir (a process log is appended as it is written)."""
        if self.store.is_local:
            return self.store.local_path(layout.job_log(job_id))
        return Path(self.settings.data_dir) / layout.job_log(job_id)

    def free_gpus(self) -> int | None:
        """GPUs of the pool not held by a running job (None: no pool, jobs see every GPU)."""
        if not self.settings.gpu_ids:
            return None
        held = {g for gs in self.gpu_of.values() for g in gs}
        return sum(1 for g in self.settings.gpu_ids if g not in held)

    async def start(self, job_id: str, gpus: int = 1) -> dict[str, Any]:
        log = self.log_path(job_id)
        env = {**os.environ, **self.settings.job_env, "PYTHONUNBUFFERED": "1",
               "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        handle: dict[str, Any] = {"gpus": gpus}
        if self.settings.gpu_ids:
            held = {g for gs in self.gpu_of.values() for g in gs}
            mine = pick_gpus(self.settings.gpu_ids, held, gpus)
            if mine is None:
                raise RuntimeError(f"no free GPU for {gpus} GPU(s) (raise gpu_ids or lower "
                                   "max_concurrent_jobs)")
            self.gpu_of[job_id] = mine
            env["CUDA_VISIBLE_DEVICES"] = handle["gpu"] = ",".join(mine)
        cmd = job_command(self.settings.job_python or sys.executable, job_id, self.store.url,
                          gpus=gpus, parent_pid=os.getpid())
        proc = await offload(_spawn, cmd, log, env)
        self.procs[job_id] = proc
        return {"pid": proc.pid, "started": time.time(), **handle}

    async def poll(self, job_id: str, handle: dict[str, Any]) -> Exit | None:
        proc = self.procs.get(job_id)
        if proc is None:
            return Exit(-1, "job process lost (not started by this service instance)", "process_lost")
        rc = proc.poll()
        if rc is None:
            deadline = self.kill_at.get(job_id)
            if deadline and time.monotonic() > deadline:
                self._signal(proc, signal.SIGKILL)
            return None
        self.procs.pop(job_id, None)
        self.kill_at.pop(job_id, None)
        self.gpu_of.pop(job_id, None)
        if rc == 0:
            return Exit(0)
        if rc < 0:
            sig = signal.Signals(-rc)
            return Exit(rc, f"job process {_SIGNAL_HINT.get(sig, f'killed by {sig.name}')}",
                        "out_of_memory_or_killed" if sig == signal.SIGKILL else "process_killed")
        if rc == 3:
            return Exit(rc, "out of memory", "out_of_memory")
        tail = await offload(self._tail, job_id)
        return Exit(rc, f"job process exited with status {rc}{tail}", "process_failed")

    def _tail(self, job_id: str) -> str:
        try:
            text = self.log_path(job_id).read_text(errors="replace").strip().splitlines()
            return ": " + " | ".join(text[-3:])[-500:] if text else ""
        except OSError:
            return ""

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def cancel(self, job_id: str, handle: dict[str, Any]) -> None:
        proc = self.procs.get(job_id)
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            self.kill_at[job_id] = time.monotonic() + self.settings.cancel_grace_s

    async def recover(self, job_id: str, handle: dict[str, Any] | None) -> bool:
        """A leftover process of a previous service instance is killed; the job re-queues."""
        pid = (handle or {}).get("pid")
        if pid and await offload(_is_our_job, pid, job_id):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for _ in range(50):
                if not await offload(_alive, pid):
                    break
                await asyncio.sleep(0.1)
        return False

    async def close(self) -> None:
        """Stop running children (their jobs stay 'running' in the DB and resume on restart)."""
        for proc in self.procs.values():
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                await offload(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                await offload(proc.wait, 5)
        self.procs.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _is_our_job(pid: int, job_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")
    except OSError:
        return False
    return b"tuneloop_trainer.run_job" in cmd and job_id.encode() in cmd


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start the job process in its own session, its output appended to ``log`` (a thread's
    work: fork and exec block)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(Path.cwd()))
