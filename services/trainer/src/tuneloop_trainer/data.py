"""The job's data step: dataset artifact -> conversational prompt/completion rows, their rendered
lengths, and the article's warnings about dataset size and epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.storage import ArtifactStore

from .events import EventWriter
from .failures import JobError
from .hparams import Hyperparameters

MIN_ROWS, SAFE_ROWS = 200, 1000  # the article: <200 rarely works, 1000+ is a safer minimum


# --------------------------------------------------------------------------------- data
def to_prompt_completion(ds: Any) -> Any:
    """``messages`` rows -> conversational ``prompt``/``completion`` rows (other columns dropped)."""

    def split(row: dict[str, Any]) -> dict[str, Any]:
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}

    return ds.map(split, remove_columns=ds.column_names)


def load_splits(store: ArtifactStore, key: str, workdir: Path) -> tuple[Any, Any]:
    from datasets import load_from_disk

    if not store.exists(key):
        raise JobError("dataset_missing", f"dataset artifact {key} not found in the store")
    dd = load_from_disk(str(store.get_dir(key, workdir / "dataset")))
    if "train" not in dd or "eval" not in dd:
        raise JobError("dataset_invalid", f"{key} must have 'train' and 'eval' splits")
    for name in ("train", "eval"):
        if "messages" not in dd[name].column_names:
            raise JobError("dataset_invalid", f"{key} split {name} has no 'messages' column")
    if len(dd["train"]) == 0 or len(dd["eval"]) == 0:
        raise JobError("dataset_invalid", f"{key}: train and eval splits must not be empty")
    return to_prompt_completion(dd["train"]), to_prompt_completion(dd["eval"])


def data_warnings(ev: EventWriter, n_train: int, hp: Hyperparameters) -> None:
    """The article's mistakes, as warning events before any GPU time is spent."""
    if n_train < MIN_ROWS:
        ev.warning("too_few_rows", f"only {n_train} training rows: under {MIN_ROWS} examples rarely "
                   f"produces meaningful specialisation; {SAFE_ROWS}+ is a safer minimum",
                   rows=n_train)
    elif n_train < SAFE_ROWS:
        ev.warning("few_rows", f"{n_train} training rows: {SAFE_ROWS}+ is a safer minimum",
                   rows=n_train)
    if hp.num_train_epochs > 3 and n_train < SAFE_ROWS:
        ev.warning("many_epochs_small_dataset", f"{hp.num_train_epochs:g} epochs on {n_train} rows "
                   "invites overfitting: watch the eval loss (early stopping is on)"
                   if hp.early_stopping_patience else
                   f"{hp.num_train_epochs:g} epochs on {n_train} rows with early stopping off "
                   "invites overfitting", epochs=hp.num_train_epochs, rows=n_train)


def row_lengths(tokenizer: Any, ds: Any) -> list[int]:
    """Rendered token length of every row (prompt + completion through the chat template)."""
    out = []
    for row in ds:
        ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
        out.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def length_report(lengths: list[int], max_len: int) -> dict[str, int]:
    """Rendered token lengths against ``max_seq_length`` (truncated rows lose their answer)."""
    return {"longest": max(lengths, default=0), "truncated": sum(n > max_len for n in lengths),
            "tokens": sum(min(n, max_len) for n in lengths)}
