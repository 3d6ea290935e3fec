"""Where a job's checkpoints live, on a local folder store and on an object store alike.

The trainer (transformers' ``Trainer``) writes, rotates and resumes from checkpoints in a local
folder. On a local store that folder *is* the store's ``jobs/<id>/checkpoints`` (no copy). On an
object store (``s3://``) it is a folder of the job's work dir: every checkpoint the trainer saves
is uploaded (``put_dir``: atomic, with its completion marker), the ones it rotated away are
deleted from the store, and a restarted job first downloads what the store holds, so it resumes
where the last attempt stopped, wherever it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from tuneloop.storage import ArtifactStore

PREFIX = "checkpoint-"
STATE = "trainer_state.json"


class Checkpoints:
    """The checkpoints folder of one job: ``dir`` for the trainer, ``key`` in the store."""

    def __init__(self, store: ArtifactStore, key: str, workdir: Path) -> None:
        self.store, self.key = store, key
        self.local = store.is_local
        self.dir = store.local_path(key) if self.local else Path(workdir) / "checkpoints"

    def restore(self) -> str | None:
        """The last checkpoint to resume from (downloaded first from an object store), or None."""
        if not self.local:
            for name in self.stored():
                dst = self.dir / name
                if not dst.exists():
                    self.store.get_dir(f"{self.key}/{name}", dst)
                    _relocate_state(dst / STATE, self.dir)
        if not self.dir.is_dir():
            return None
        return get_last_checkpoint(str(self.dir))

    def stored(self) -> list[str]:
        """Names of the checkpoints the store holds (complete ones only)."""
        return [n for n in self.store.list(self.key) if n.startswith(PREFIX)]

    def sync(self) -> None:
        """Mirror the local folder into an object store after a save: upload new checkpoints,
        delete those the trainer rotated away (the best one is never rotated). Local: nothing."""
        if self.local:
            return
        here = {p.name for p in self.dir.glob(f"{PREFIX}*") if p.is_dir()}
        there = set(self.stored())
        for name in sorted(here - there):
            self.store.put_dir(self.dir / name, f"{self.key}/{name}")
        for name in sorted(there - here):
            self.store.delete(f"{self.key}/{name}")


def _relocate_state(state_file: Path, new_dir: Path) -> None:
    """A downloaded checkpoint names the best one by the absolute path of the attempt that saved
    it; point it at the same checkpoint in this attempt's folder (else the best model is lost)."""
    if not state_file.is_file():
        return
    state = json.loads(state_file.read_text())
    best = state.get("best_model_checkpoint")
    if best:
        state["best_model_checkpoint"] = str(new_dir / Path(best).name)
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
