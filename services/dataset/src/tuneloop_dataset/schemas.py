"""Request models of the dataset service (the API contract; see docs/contracts.md)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneloop.errors import InvalidRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,127}$")
HOLDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def check_name(value: str) -> str:
    if not NAME_RE.match(value) or ".." in value:
        raise ValueError("name must be 1-128 characters of letters, digits, space, '_', '-', '.', "
                         "start with a letter or digit and contain no '..' or '/'")
    return value


class UploadOptions(BaseModel):
    """Options of an upload (form fields, query parameters or JSON body fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Display name (metadata only, never a path).")
    on_invalid: Literal["reject", "skip"] = Field(
        "reject", description="reject: any invalid line fails the upload (422); skip: keep "
        "the valid rows and list the rest in the report.")
    eval_size: int | None = Field(None, ge=0, description="Held-out rows (default 100..200 rule).")
    eval_fraction: float | None = Field(None, gt=0, lt=1, description="Held-out fraction.")
    seed: int = Field(42, description="Seed of the deterministic split.")
    max_seq_length: int | None = Field(None, ge=8, le=1 << 20,
                                       description="Truncation limit for the report (default 2048).")
    tokenizer: str | None = Field(None, max_length=512,
                                  description="Local model folder whose tokenizer computes token stats.")

    _check_name = field_validator("name")(lambda cls, v: v if v is None else check_name(v))

    @model_validator(mode="after")
    def _one_eval_option(self) -> "UploadOptions":
        if self.eval_size is not None and self.eval_fraction is not None:
            raise ValueError("give eval_size or eval_fraction, not both")
        return self


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, max_length=4096, description="File under DATASET_IMPORT_ROOT.")
    hf_dataset: str | None = Field(None, max_length=200, pattern=r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$",
                                   description="Hub dataset id (org/name); never a local path.")
    split: str = Field("train", max_length=64)
    config: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one of source.path or source.hf_dataset")
        return self


class Lineage(BaseModel):
    """Where the rows of a version came from, beyond its parent (e.g. the gateway's captured
    requests it was curated from). Stored in the version's ``source.lineage``; metadata only,
    not part of the content hash."""

    model_config = ConfigDict(extra="forbid")

    parent_dataset_id: str | None = Field(None, max_length=64, pattern=r"^ds-[a-z0-9]{6,64}$")
    captures: list[str] = Field([], max_length=1_000_000, description="Capture ids (cap-...).")
    responses: list[str] = Field([], max_length=1_000_000, description="Their response ids.")


class JsonUpload(UploadOptions):
    rows: list[Any] | None = Field(None, description="Rows in article or chat form.")
    eval_rows: list[Any] | None = Field(None, description="Own eval rows (instead of a split).")
    replay_rows: list[Any] | None = Field(
        None, max_length=10_000, description="Replay rows against catastrophic forgetting (general "
        "prompts answered by the base model: the gateway's POST /v1/replay-rows makes them). Added "
        "to the train split only, spread evenly; never to the eval split.")
    source: Source | None = None
    lineage: Lineage | None = Field(None, description="Provenance of the rows (rows uploads).")

    @model_validator(mode="after")
    def _rows_or_source(self) -> "JsonUpload":
        if (self.rows is None) == (self.source is None):
            raise ValueError("give exactly one of 'rows' or 'source'")
        return self

    def options(self) -> UploadOptions:
        return UploadOptions(**self.model_dump(include=set(UploadOptions.model_fields)))


class ExampleRequest(UploadOptions):
    n: int = Field(500, ge=1, le=100_000, description="Rows of the support-ticket task.")
    example_seed: int = Field(42, description="Seed of the generator.")

    def options(self) -> UploadOptions:
        return UploadOptions(**self.model_dump(include=set(UploadOptions.model_fields)))


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo_id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    private: bool = True


class Teacher(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(..., pattern=r"^https?://", max_length=512,
                          description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    model: str = Field(..., min_length=1, max_length=512)
    api_key: str | None = Field(None, max_length=512, description="Kept in memory only.")


class SynthRequest(BaseModel):
    """A synthetic-data job (the article: prompt a teacher with examples, review, curate)."""

    model_config = ConfigDict(extra="forbid")
    teacher: Teacher
    instruction: str = Field(..., min_length=1, max_length=8000,
                             description="The task, e.g. 'Summarize this support ticket...'.")
    seed_examples: list[Any] = Field(default_factory=list, max_length=50,
                                     description="Example rows (article or chat form).")
    inputs: list[str] | None = Field(
        None, max_length=5000, description="mode=completions: the inputs to answer.")
    mode: Literal["examples", "completions"] = Field(
        "examples", description="examples: the teacher writes whole new rows as JSON; "
        "completions: the teacher answers the given inputs.")
    n: int = Field(20, ge=1, description="Examples wanted.")
    max_requests: int | None = Field(None, ge=1, description="Teacher calls at most (default 3n).")
    expect_json_output: bool | None = Field(
        None, description="Require answers to parse as JSON (default: when the seeds' do).")
    temperature: float = Field(0.8, ge=0, le=2)
    max_tokens: int = Field(512, ge=1, le=8192)

    @model_validator(mode="after")
    def _mode_inputs(self) -> "SynthRequest":
        if self.mode == "completions" and not self.inputs:
            raise ValueError("mode=completions needs 'inputs'")
        if self.mode == "examples" and not self.seed_examples:
            raise ValueError("mode=examples needs at least one seed example")
        return self


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accept: list[int] = Field(default_factory=list, max_length=100_000)
    reject: list[int] = Field(default_factory=list, max_length=100_000)
    accept_all_pending: bool = False


class PublishRequest(UploadOptions):
    pass


def parse_model(model: type[BaseModel], data: Any) -> Any:
    """Validate ``data`` into ``model``; errors become a 400 in the envelope with the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        code = "invalid_name" if loc == "name" else "invalid_request"
        raise InvalidRequest(f"{loc + ': ' if loc else ''}{err.get('msg')}", param=loc or None,
                             code=code,
                             details=[{"loc": list(map(str, e.get("loc", ()))), "msg": e.get("msg")}
                                      for e in exc.errors()]) from exc


def check_holder(holder: str) -> str:
    if not HOLDER_RE.match(holder):
        raise InvalidRequest("holder must be 1-128 characters of letters, digits, '_', '.', ':', '-'",
                             code="invalid_holder", param="holder")
    return holder
