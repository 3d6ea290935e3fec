"""docs/contracts.md is checked against the code: every field of every contract model
(``tuneloop.contracts``) is named in its service's section, and the store-layout table is
exactly what ``tuneloop.layout`` builds. A field added to a model without a word in the docs,
or a key moved without the table, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneloop import contracts, layout

DOC = (Path(__file__).resolve().parents[1] / "docs" / "contracts.md").read_text()

SECTIONS = {
    "## Dataset service": [contracts.Dataset, contracts.DatasetCounts, contracts.RowsPage,
                           contracts.Lease],
    "## Trainer service": [contracts.Job, contracts.JobProgress, contracts.JobEvent,
                           contracts.ModelVersion],
    "## Inference service": [contracts.Deployment, contracts.DeploymentReplica, contracts.Alias,
                             contracts.AliasFlip, contracts.AliasSwap, contracts.GpuPlacement],
    "## Gateway": [contracts.EvalRun, contracts.Promotion, contracts.Capture,
                   contracts.CaptureFeedback],
}


def _section(title: str) -> str:
    start = DOC.index(title)
    nxt = DOC.find("\n## ", start + 1)
    return DOC[start:nxt if nxt > 0 else None]


@pytest.mark.parametrize("title", list(SECTIONS))
def test_every_contract_field_is_documented_in_its_section(title: str) -> None:
    text = _section(title) + _section("# Contracts between services")[:800]  # the list shape
    missing = [f"{model.__name__}.{name}" for model in SECTIONS[title]
               for name in model.model_fields
               if not re.search(rf"[\"`]{re.escape(name)}[\"`]", text)]
    assert not missing, f"named in tuneloop.contracts, not in docs/contracts.md {title}: {missing}"


def test_store_layout_table_is_what_layout_builds() -> None:
    ids = {"<ds-id>": "ds-0", "<job-id>": "job-0", "<mv-id>": "mv-0", "<file-id>": "file-0",
           "<name>": "n", "<quant>": "q8_0"}
    built = {layout.dataset_hf("ds-0") + "/", layout.dataset_parquet("ds-0", "train"),
             layout.dataset_parquet("ds-0", "eval"), layout.dataset_report("ds-0"),
             layout.job_checkpoints("job-0") + "/", layout.job_spec("job-0"),
             layout.job_events("job-0"), layout.job_result("job-0"), layout.job_log("job-0"),
             layout.upload_file("file-0"), layout.model_adapter("mv-0") + "/",
             layout.model_merged("mv-0") + "/", layout.model_gguf("mv-0", "q8_0"),
             layout.base_model("n") + "/"}
    table = _section("## Artifact store layout")
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, flags=re.M)[1:]:
        keys = re.findall(r"`([^`]+)`", cell)
        folder = keys[0].rsplit("/", 1)[0] if keys else ""
        for key in keys:  # "a/x.json, y.json": later names share the first one's folder
            key = key if "/" in key else f"{folder}/{key}"
            for placeholder, value in ids.items():
                key = key.replace(placeholder, value)
            documented.add(key)
    assert documented == built


def test_layout_refuses_an_unknown_split() -> None:
    with pytest.raises(ValueError):
        layout.dataset_parquet("ds-0", "../x")


def test_a_contract_reads_like_the_dict_it_came_from_and_keeps_extra_fields() -> None:
    wire = {"id": "job-1", "object": "training_job", "status": "queued", "dataset_id": "ds-1",
            "base_model": "b", "backend": "peft", "created_at": 1, "new_field": [1]}
    job = contracts.Job.model_validate(wire)
    assert job.status == job["status"] == "queued" and job.get("nope", 3) == 3
    assert "new_field" in job and "model_id" not in job and job["new_field"] == [1]
    assert job.to_dict() == wire  # nothing added, nothing lost
    with pytest.raises(KeyError):
        job["nope"]


def test_a_contract_refuses_what_breaks_it() -> None:
    with pytest.raises(ValidationError):  # a status no service answers
        contracts.Job.model_validate({"id": "job-1", "status": "paused", "dataset_id": "d",
                                      "base_model": "b", "backend": "peft", "created_at": 1})
    with pytest.raises(ValidationError):  # a page without data
        contracts.Page[contracts.Dataset].model_validate({"object": "list", "has_more": False})
