"""The failure a job reports with a stable code (no FastAPI here: the job image stays small)."""

from __future__ import annotations


class JobError(RuntimeError):
    """A failure with a stable code, reported as the job's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
