"""Several worker processes of one service behind one port (the gateway's ``GATEWAY_WORKERS``).

A proxy in Python spends ~1 ms of one core per request (uvicorn's server, the upstream client):
256 generations that start and end together wait for one core at both ends. The supervisor
binds the port once and starts N copies of the service (``python -m <module> --fd <fd>``), each
accepting on the same listening socket, so the kernel hands each new connection to an idle
worker. It restarts a worker that dies (after a back-off when one dies soon after starting),
forwards SIGTERM/SIGINT so each worker drains as a single process would, and removes the run
directory it made for what the workers share on this host:

- ``PROMETHEUS_MULTIPROC_DIR``: every worker's counters and histograms, summed by ``/metrics``
  whichever worker answers (prometheus_client's multiprocess mode);
- ``TUNELOOP_RUN_DIR``: files the service maps into every worker (the gateway keeps its per-key
  rate limits and its key-cache invalidations there, so N workers enforce one limit).

Each worker knows its slot (``TUNELOOP_WORKER_INDEX``, 0..N-1, kept when it is restarted), so
work it owns in the database can be told from its siblings'. Workers run in their own process
group (a terminal's Ctrl-C reaches them once, through the supervisor) and die with it if the
supervisor is killed (Linux's parent-death signal).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tuneloop.workers")

WORKER_ENV = "TUNELOOP_WORKER_INDEX"
RUN_DIR_ENV = "TUNELOOP_RUN_DIR"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_AUTO_WORKERS = 4


def worker_index() -> int | None:
    """This process's worker slot, or None when the service runs as one process."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw not in (None, "") else None


def run_dir() -> Path | None:
    """The directory the workers of this service share on this host (None: one process)."""
    raw = os.environ.get(RUN_DIR_ENV)
    return Path(raw) if raw else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity, bounded by a cgroup v2 CPU quota (a container
    limited to 2 CPUs on a 64-core node counts 2)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def resolve_workers(wanted: int, cpus: int | None = None) -> int:
    """``wanted`` when set (> 0); else (0, auto) one worker up to 4 CPUs (the engine and the
    other services need them: a 2-core machine runs the whole loop), then one per 4 CPUs, at
    most 4 (bench/serve_load.py measured where a proxy stops being the bottleneck)."""
    if wanted > 0:
        return wanted
    cpus = available_cpus() if cpus is None else cpus
    return 1 if cpus <= 4 else min(MAX_AUTO_WORKERS, cpus // 4)


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The one listening socket the workers share (inheritable by them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restart_at: float = 0.0
    quick_exits: int = 0  # in a row; the pause before a restart doubles with each (1 s .. 30 s)


@dataclass
class Supervisor:
    """Run ``module`` as ``workers`` processes on ``host:port`` until SIGTERM/SIGINT."""

    module: str
    host: str
    port: int
    workers: int
    shutdown_timeout_s: float = 30.0
    #: a worker that dies sooner than this after starting is restarted after a growing pause;
    #: one that does so ``give_up_after`` times in a row (a bad setting, a database that is not
    #: there) stops the service with an error, as a single process would have exited
    crash_window_s: float = 10.0
    give_up_after: int = 5

    def run(self) -> int:
        log.info("supervising workers", extra={"workers": self.workers, "port": self.port,
                                                "pid": os.getpid()})
        sock = listen(self.host, self.port)
        run = Path(tempfile.mkdtemp(prefix=f"{self.module}-"))
        (run / "metrics").mkdir()
        env = {**os.environ, RUN_DIR_ENV: str(run), METRICS_ENV: str(run / "metrics")}
        slots = [_Slot(i) for i in range(self.workers)]
        stopping: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            stopping.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in slots:
                self._spawn(slot, sock, env)
            failed = False
            while not stopping and not failed:
                failed = self._watch(slots, sock, env)
                if not failed:
                    time.sleep(0.2)
            for slot in slots:  # each worker drains as one process would
                if slot.proc is not None and slot.proc.poll() is None:
                    slot.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.shutdown_timeout_s + 10
            for slot in slots:
                if slot.proc is None:
                    continue
                try:
                    slot.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    slot.proc.kill()
                    slot.proc.wait(5)
            return 1 if failed else 0
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            sock.close()
            shutil.rmtree(run, ignore_errors=True)

    def _spawn(self, slot: _Slot, sock: socket.socket, env: dict[str, str]) -> None:
        fd = sock.fileno()
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--fd", str(fd)],
            env={**env, WORKER_ENV: str(slot.index)}, pass_fds=(fd,),
            preexec_fn=_die_with_parent)  # safe here: the supervisor has one thread
        slot.started = time.monotonic()

    def _watch(self, slots: list[_Slot], sock: socket.socket, env: dict[str, str]) -> bool:
        """Restart workers that died; True when one keeps dying at once (give up)."""
        now = time.monotonic()
        for slot in slots:
            proc = slot.proc
            if proc is not None and proc.poll() is not None:
                quick = now - slot.started < self.crash_window_s
                slot.quick_exits = slot.quick_exits + 1 if quick else 0
                if slot.quick_exits >= self.give_up_after:
                    log.error("worker keeps exiting at start; stopping", extra={
                        "worker": slot.index, "returncode": proc.returncode,
                        "exits": slot.quick_exits})
                    return True
                pause = min(30.0, 2.0 ** (slot.quick_exits - 1)) if slot.quick_exits else 0.0
                slot.restart_at = now + pause
                log.error("worker exited; restarting it", extra={
                    "worker": slot.index, "pid": proc.pid, "returncode": proc.returncode,
                    "restart_in_s": pause})
                slot.proc = None
            if slot.proc is None and now >= slot.restart_at:
                self._spawn(slot, sock, env)
        return False


@contextlib.contextmanager
def host_lock(name: str) -> Iterator[None]:
    """Exclusive among the workers of this service on this host (a ``flock`` on a file in the
    run directory); nothing to exclude, and no lock, when the service runs as one process.
    Held around what each worker does once at start-up but only one may do at a time
    (migrating a SQLite database, installing the first admin key)."""
    share = run_dir()
    if share is None:
        yield
        return
    fd = os.open(share / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
