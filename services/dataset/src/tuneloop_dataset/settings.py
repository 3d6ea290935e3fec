"""Dataset service settings (env prefix ``DATASET_``, falling back to ``TUNELOOP_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneloop.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    """Everything the dataset service reads from the environment (``DATASET_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="DATASET_", extra="ignore")

    service_name: str = "dataset"
    port: int = 8001

    # -- upload limits -------------------------------------------------------------------
    max_upload_bytes: int = Field(
        4 << 30, description="Largest upload (file or import) in bytes; bigger -> 413.")
    max_line_bytes: int = Field(
        4 << 20, description="Largest single JSONL line in bytes; longer lines are a "
        "per-line `line_too_long` error (read with a bounded reader, never buffered whole).")
    max_json_body_bytes: int = Field(
        64 << 20, description="Largest JSON request body (`{\"rows\": [...]}`); bigger -> 413.")
    max_errors_reported: int = Field(
        100, description="Per-line errors listed in a response/report (the total is exact).")
    max_concurrent_ingests: int = Field(
        2, description="Uploads processed at once (CPU bound); others wait their turn.")

    # -- sources -------------------------------------------------------------------------
    import_root: Path | None = Field(
        None, description="`{\"source\": {\"path\"}}` imports only read files under this "
        "folder (default: <data_dir>/imports). Symlinks are resolved before the check.")
    hub_enabled: bool = Field(
        False, description="Allow `{\"source\": {\"hf_dataset\"}}` imports and push_to_hub "
        "(needs network). Off by default -> 403 `hub_disabled`.")
    hub_token: str | None = Field(None, description="Hugging Face token for push_to_hub.")

    # -- report --------------------------------------------------------------------------
    default_tokenizer: str | None = Field(
        None, description="Tokenizer (local model folder) for token stats when the upload "
        "names none. Unset -> token stats are skipped with a note.")
    default_max_seq_length: int = Field(2048, description="Truncation limit for the report.")
    near_dup_threshold: float = Field(
        0.85, description="Jaccard threshold of the MinHash LSH near-duplicate check.")
    near_dup_num_perm: int = Field(64, description="MinHash permutations.")
    near_dup_max_rows: int = Field(
        200_000, description="Near-duplicate/leakage analysis is skipped above this size.")
    short_output_chars: int = Field(
        3, description="Assistant answers shorter than this many characters are 'very short'.")
    preview_rows: int = Field(3, description="Rows rendered through the chat template.")

    # -- synthetic data ------------------------------------------------------------------
    synth_request_timeout_s: float = Field(120.0, description="Timeout per teacher request.")
    synth_max_examples: int = Field(5000, description="Largest `n` of a synthetic job.")
    synth_retries: int = Field(
        5, ge=0, le=20, description="Retries of one teacher request answered 429 or 5xx, or "
        "lost on the way, with exponential backoff (honouring Retry-After) before it counts "
        "as failed: one rate-limited answer no longer ends the job.")
    synth_retry_max_wait_s: float = Field(
        60.0, gt=0, description="Longest wait before one retry (a larger Retry-After is cut "
        "to this).")

    def resolved_import_root(self) -> Path:
        return (self.import_root or (self.data_dir / "imports")).resolve()
