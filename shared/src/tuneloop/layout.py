"""Every key of the artifact store, in one place (docs/contracts.md "Artifact store layout").

Keys are built from ids (``ds-...``, ``job-...``, ``mv-...``, ``file-...``) and fixed names,
never from user strings, so they cannot escape their folder. Services and job processes ask
this module for a key instead of writing the f-string themselves: a change of layout is one
change here, and ``tests/test_layout.py`` checks the table in the docs against it.
"""

from __future__ import annotations

#: the two splits every dataset version has
SPLITS = ("train", "eval")


# -- datasets/<ds-id>/ : the dataset service writes, everyone reads ------------------------------
def dataset(ds_id: str) -> str:
    """The folder of one dataset version."""
    return f"datasets/{ds_id}"


def dataset_hf(ds_id: str) -> str:
    """``DatasetDict.save_to_disk`` of the version (splits ``train`` and ``eval``)."""
    return f"{dataset(ds_id)}/hf"


def dataset_parquet(ds_id: str, split: str) -> str:
    """One split's rows as parquet (``messages``, ``line``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return f"{dataset(ds_id)}/{split}.parquet"


def dataset_report(ds_id: str) -> str:
    return f"{dataset(ds_id)}/report.json"


def dataset_artifacts(ds_id: str) -> dict[str, str]:
    """The ``artifacts`` of a Dataset object: name -> key."""
    return {"hf": dataset_hf(ds_id), "train_parquet": dataset_parquet(ds_id, "train"),
            "eval_parquet": dataset_parquet(ds_id, "eval"), "report": dataset_report(ds_id)}


# -- jobs/<job-id>/ : the trainer and its job processes ------------------------------------------
def job(job_id: str) -> str:
    """The folder of one training job (deleted with the job; model versions stay)."""
    return f"jobs/{job_id}"


def job_spec(job_id: str) -> str:
    """What the job process runs (written by the trainer before it is queued)."""
    return f"{job(job_id)}/spec.json"


def job_events(job_id: str) -> str:
    """The job process's event channel (JSON lines, appended)."""
    return f"{job(job_id)}/events.jsonl"


def job_result(job_id: str) -> str:
    return f"{job(job_id)}/result.json"


def job_log(job_id: str) -> str:
    """stdout/stderr of a local job process."""
    return f"{job(job_id)}/process.log"


def job_checkpoints(job_id: str) -> str:
    return f"{job(job_id)}/checkpoints"


# -- models/<mv-id>/ : model versions, immutable once written ------------------------------------
def model(model_id: str) -> str:
    return f"models/{model_id}"


def model_adapter(model_id: str) -> str:
    """The LoRA adapter (PEFT format)."""
    return f"{model(model_id)}/adapter"


def model_merged(model_id: str) -> str:
    """The merged 16-bit model the inference service serves."""
    return f"{model(model_id)}/merged"


def model_gguf(model_id: str, quant: str | None = None) -> str:
    """The GGUF exports folder, or one quantisation's file in it."""
    folder = f"{model(model_id)}/gguf"
    return folder if quant is None else f"{folder}/{quant}.gguf"


# -- files/ and base/ ----------------------------------------------------------------------------
def upload_file(file_id: str) -> str:
    """An OpenAI ``/v1/files`` upload, kept as raw JSONL."""
    return f"files/{file_id}.jsonl"


def base_model(name: str) -> str:
    """A prepared base model (e.g. SmolLM2-135M-Instruct converted from GGUF)."""
    return f"base/{name}"
