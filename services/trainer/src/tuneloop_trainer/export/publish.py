"""Publishing a job's outputs: immutable store folders, the optional Hub push, and the base
model's revision for the lineage record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.storage import ArtifactStore

from ..events import EventWriter


def publish(store: ArtifactStore, stage: Path, key: str) -> None:
    import shutil

    if store.exists(key):
        shutil.rmtree(stage, ignore_errors=True)
        return
    store.put_dir(stage, key, move=True)


def push_to_hub(merged: Path, repo: str, ev: EventWriter) -> dict[str, Any]:
    import os

    if not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        detail = "push_to_hub skipped: no HF_TOKEN"
        ok = False
    elif os.environ.get("HF_HUB_OFFLINE") in ("1", "true"):
        detail, ok = "push_to_hub skipped: HF_HUB_OFFLINE is set (no network)", False
    else:
        try:
            from huggingface_hub import HfApi

            HfApi().upload_folder(folder_path=str(merged), repo_id=repo, repo_type="model")
            detail, ok = f"pushed to {repo}", True
        except Exception as exc:
            detail, ok = f"push_to_hub failed: {exc}", False
    if not ok:
        ev.warning("push_to_hub_failed", detail)
    return {"kind": "push_to_hub", "passed": ok, "detail": detail}


def base_revision(base_model: str) -> dict[str, Any]:
    """Identify the base: Hub commit when cached from the Hub, else a hash of config + weights index."""
    import hashlib

    p = Path(base_model)
    if p.is_dir():
        h = hashlib.sha256()
        for name in sorted(x.name for x in p.iterdir() if x.suffix in (".json", ".safetensors")):
            f = p / name
            h.update(name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json" or f.stat().st_size < 64 << 20:
                h.update(f.read_bytes())
        return {"kind": "local", "path": str(p.resolve()), "sha256": h.hexdigest()}
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(base_model, local_files_only=True))
        return {"kind": "hub", "repo": base_model, "revision": snap.name}
    except Exception:
        return {"kind": "hub", "repo": base_model, "revision": None}
