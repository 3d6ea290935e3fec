"""Where rows come from besides an upload: JSON rows, a local path, the Hub, the example set.

Each helper writes (or points to) a JSONL file that then goes through the same streaming
validator as an upload, so every source gets the same checks and errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuneloop.errors import Forbidden, NotFound, PayloadTooLarge, TuneloopError, UpstreamError

from .schemas import Source
from .settings import DatasetSettings


def write_rows(rows: list[Any], path: Path) -> None:
    """JSON rows -> JSONL (line N = rows[N-1]); non-objects stay and fail validation per line."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def resolve_import_path(settings: DatasetSettings, raw: str) -> Path:
    """A file under the import root (symlinks resolved first), else 403/404."""
    root = settings.resolved_import_root()
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    real = candidate.resolve()
    if not real.is_relative_to(root):
        raise Forbidden(f"source.path must be a file under the import root {root} "
                        "(DATASET_IMPORT_ROOT)", code="path_not_allowed", param="source.path")
    if not real.is_file():
        raise NotFound(f"source.path {raw[:200]!r} not found under the import root",
                       code="source_not_found", param="source.path")
    if real.stat().st_size > settings.max_upload_bytes:
        raise PayloadTooLarge(f"source file is larger than {settings.max_upload_bytes} bytes",
                              param="source.path")
    return real


def require_hub(settings: DatasetSettings) -> None:
    if not settings.hub_enabled:
        raise Forbidden("Hugging Face Hub access is disabled on this server "
                        "(set DATASET_HUB_ENABLED=true to allow imports and pushes)",
                        code="hub_disabled", param="source.hf_dataset")


def hub_to_jsonl(settings: DatasetSettings, src: Source, path: Path) -> None:
    """Stream a Hub dataset split into JSONL (only when DATASET_HUB_ENABLED=true)."""
    require_hub(settings)
    if src.hf_dataset and Path(src.hf_dataset).exists():  # datasets would read a local folder of that name
        raise Forbidden("source.hf_dataset names a local path; use source.path (import root)",
                        code="path_not_allowed", param="source.hf_dataset")
    try:
        import datasets

        ds = datasets.load_dataset(src.hf_dataset, src.config, split=src.split, streaming=True)
        written = 0
        with open(path, "w", encoding="utf-8") as fh:
            for row in ds:
                line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
                written += len(line)
                if written > settings.max_upload_bytes:
                    raise PayloadTooLarge("the Hub dataset is larger than DATASET_MAX_UPLOAD_BYTES",
                                          param="source.hf_dataset")
                fh.write(line)
    except TuneloopError:
        raise
    except FileNotFoundError as exc:
        raise NotFound(f"Hub dataset {src.hf_dataset!r} not found: {str(exc)[:300]}",
                       code="source_not_found", param="source.hf_dataset") from exc
    except Exception as exc:  # network/hub failures are upstream errors
        raise UpstreamError(f"cannot load Hub dataset {src.hf_dataset!r}: {str(exc)[:300]}",
                            code="hub_error", param="source.hf_dataset") from exc


def push_to_hub(settings: DatasetSettings, hf_dir: Path, repo_id: str, private: bool) -> str:
    """Push a stored DatasetDict to the Hub (needs DATASET_HUB_ENABLED and DATASET_HUB_TOKEN)."""
    require_hub(settings)
    if not settings.hub_token:
        raise TuneloopError("no Hugging Face token configured (DATASET_HUB_TOKEN)",
                            code="hub_token_missing", status=400, param="repo_id")
    try:
        import datasets

        datasets.load_from_disk(str(hf_dir)).push_to_hub(repo_id, private=private,
                                                         token=settings.hub_token)
    except Exception as exc:  # network/hub failures are upstream errors
        raise UpstreamError(f"push_to_hub failed: {str(exc)[:300]}", code="hub_push_failed",
                            param="repo_id") from exc
    return f"https://huggingface.co/datasets/{repo_id}"


_SAFE = re.compile(r"[^A-Za-z0-9 _.\-]+")


def name_from_filename(filename: str | None) -> str | None:
    """A display name from an uploaded file name: its base name, odd characters replaced."""
    if not filename:
        return None
    base = re.split(r"[\\/]", filename)[-1]
    base = _SAFE.sub("-", base).replace("..", "-").strip(" .-_")[:128]
    return base or None
