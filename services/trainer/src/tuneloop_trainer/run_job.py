"""Job process entrypoint: ``python -m tuneloop_trainer.run_job <job-id> [--store URL]``.

Reads ``jobs/<id>/spec.json`` from the artifact store, trains, exports, writes
``jobs/<id>/result.json`` and exits 0; on failure writes an ``error`` event (code + message)
and exits non-zero. Events go to ``jobs/<id>/events.jsonl``. The same entrypoint runs under the
local executor (a child process of the service) and in a Kubernetes Job, once per GPU under
torchrun for a multi-GPU job (only rank 0 writes events, exports and the result). Needs only the
artifact store (a local folder or an object store, :mod:`.pipeline`): no database (so the GPU
image stays small). On an object store the event channel is a local file mirrored to
``jobs/<id>/events.jsonl`` after every event (:class:`.events.EventWriter`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from tuneloop import layout
from tuneloop.ids import is_valid_id
from tuneloop.storage import ArtifactStore

from .backends import get_backend, multi_gpu_backend
from .events import EventWriter, RankEventWriter
from .failures import JobError
from .launch import dist_info
from .settings import TrainerSettings

EXIT_OK, EXIT_FAILED, EXIT_OOM = 0, 1, 3


def open_store(url: str | None) -> ArtifactStore:
    """``url`` (default: the service's artifact URL) with the service's S3 options (endpoint,
    credentials: ``TRAINER_S3_*`` / ``TUNELOOP_S3_*``, which the executors pass on)."""
    settings = TrainerSettings() if url is None else TrainerSettings(artifact_url=url)
    return settings.open_artifact_store()


def event_writer(store: ArtifactStore, job_id: str, rank: int, workdir: Path) -> EventWriter:
    """Rank 0 writes the events (other ranks only their own error, :class:`RankEventWriter`).
    Local store: appended in place. Object store (no append): a local file, continued from what
    the store holds (a restarted job), mirrored whole to the store after every event."""
    key = layout.job_events(job_id)
    if store.is_local:
        path = store.local_path(key)
        return EventWriter(path) if rank == 0 else RankEventWriter(path, rank)
    path = workdir / "events.jsonl"
    if rank != 0:  # the store's copy is rank 0's; this rank's error stays in its process log
        return RankEventWriter(path, rank)
    if store.exists(key):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.read_bytes(key))
    return EventWriter(path, mirror=lambda data: store.write_bytes(key, data))


def watch_parent(parent_pid: int, direct: bool = True) -> None:
    """Exit when the supervising service dies (a local job never outlives its supervisor).
    Under torchrun the service is the grandparent (``direct=False``): watch that it lives."""

    def gone() -> bool:
        if direct:
            return os.getppid() != parent_pid
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def loop() -> None:
        while True:
            if gone():
                os._exit(EXIT_FAILED)
            time.sleep(1.0)

    threading.Thread(target=loop, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuneloop_trainer.run_job")
    p.add_argument("job_id")
    p.add_argument("--store", default=None, help="artifact store URL (default from env)")
    p.add_argument("--parent-pid", type=int, default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rank, local_rank, world = dist_info()
    if a.parent_pid:
        watch_parent(a.parent_pid, direct=world == 1)
    job_id = a.job_id
    if not is_valid_id(job_id, "job"):  # only ids go into store keys
        p.error(f"invalid job id {job_id!r}")
    store = open_store(a.store)
    with tempfile.TemporaryDirectory(prefix=f"tuneloop-{job_id}-r{rank}-") as tmp:
        return run(store, job_id, rank, world, Path(tmp))


def run(store: ArtifactStore, job_id: str, rank: int, world: int, workdir: Path) -> int:
    """Spec -> pipeline -> result, every failure reported as an ``error`` event; the exit code."""
    # one writer of events, result and exports: rank 0; other ranks only train (and report an
    # error of their own, tagged with their rank, so a failing rank is not silent)
    ev = event_writer(store, job_id, rank, workdir)
    if store.exists(layout.job_result(job_id)):
        ev.emit("info", message="result already written; nothing to do")
        return EXIT_OK
    spec = json.loads(store.read_bytes(layout.job_spec(job_id)))
    ev.emit("process_start", pid=os.getpid(), host=os.uname().nodename, rank=rank,
            world_size=world)
    try:
        # the backend first: Unsloth must be imported before transformers/TRL (the pipeline's)
        backend = get_backend(multi_gpu_backend(spec.get("backend", "auto"), world))
        from . import pipeline

        result = pipeline.run(spec, store, ev, workdir, backend)
        if rank != 0:
            return EXIT_OK
        store.write_bytes(layout.job_result(job_id), pipeline.dumps(result).encode())
        ev.emit("done", model_id=result["model_id"])
        return EXIT_OK
    except JobError as exc:
        ev.emit("error", code=exc.code, message=str(exc))
        return EXIT_FAILED
    except Exception as exc:  # every failure leaves its reason in the events
        code, rc = _classify(exc)
        ev.emit("error", code=code, message=f"{type(exc).__name__}: {exc}"[:2000],
                traceback=traceback.format_exc()[-4000:])
        return rc


def _classify(exc: BaseException) -> tuple[str, int]:
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "out_of_memory", EXIT_OOM
    return "training_error", EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
