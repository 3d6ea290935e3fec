"""Job process entrypoint: ``python -m tuneloop_trainer.run_job <job-id> [--store URL]``.

Reads ``jobs/<id>/spec.json`` from the artifact store, trains, exports, writes
``jobs/<id>/result.json`` and exits 0; on failure writes an ``error`` event (code + message)
and exits non-zero. Events go to ``jobs/<id>/events.jsonl``. The same entrypoint runs under the
local executor (a child process of the service) and in a Kubernetes Job, once per GPU under
torchrun for a multi-GPU job (only rank 0 writes events, exports and the result). Needs only the
artifact store: no database, no service settings (so the GPU image stays small).
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

EXIT_OK, EXIT_FAILED, EXIT_OOM = 0, 1, 3


def default_store_url() -> str:
    for var in ("TRAINER_ARTIFACT_URL", "TUNELOOP_ARTIFACT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    data = os.environ.get("TRAINER_DATA_DIR") or os.environ.get("TUNELOOP_DATA_DIR") or "var"
    return str((Path(data) / "artifacts").resolve())


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
    from .launch import dist_info

    rank, local_rank, world = dist_info()
    if a.parent_pid:
        watch_parent(a.parent_pid, direct=world == 1)
    job_id = a.job_id
    if not is_valid_id(job_id, "job"):  # only ids go into store keys
        p.error(f"invalid job id {job_id!r}")
    store = ArtifactStore(a.store or default_store_url())
    from .events import EventWriter, RankEventWriter

    path = store.local_path(layout.job_events(job_id))
    # one writer of events, result and exports: rank 0; other ranks only train (and report an
    # error of their own, tagged with their rank, so a failing rank is not silent)
    ev = EventWriter(path) if rank == 0 else RankEventWriter(path, rank)
    if store.exists(layout.job_result(job_id)):
        ev.emit("info", message="result already written; nothing to do")
        return EXIT_OK
    spec = json.loads(store.read_bytes(layout.job_spec(job_id)))
    ev.emit("process_start", pid=os.getpid(), host=os.uname().nodename, rank=rank,
            world_size=world)
    from . import training

    try:
        with tempfile.TemporaryDirectory(prefix=f"tuneloop-{job_id}-r{rank}-") as tmp:
            result = training.run(spec, store, ev, Path(tmp))
        if rank != 0:
            return EXIT_OK
        store.write_bytes(layout.job_result(job_id), training.dumps(result).encode())
        ev.emit("done", model_id=result["model_id"])
        return EXIT_OK
    except training.JobError as exc:
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
