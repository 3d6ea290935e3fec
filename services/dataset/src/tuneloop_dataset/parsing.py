"""Streaming JSONL validation: bounded line reader, per-line errors, normalised rows.

The validator never holds the file in memory: it reads one line at a time with a bounded
``readline`` (a line longer than ``max_line_bytes`` is drained in chunks and reported, never
buffered), checks the row, and writes the normalised row (``{"messages": [...], "line": N}``)
to an output file while feeding a running content hash. Memory stays flat with file size.

Accepted row forms:

- article form: ``{"instruction": str, "input": str (optional), "output": str}``
- chat form: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
  with at least one ``user`` message and an ``assistant`` message last.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

ROLES = ("system", "user", "assistant")
BOM = b"\xef\xbb\xbf"
_DRAIN_CHUNK = 1 << 20


class UploadRejected(Exception):
    """The whole upload is unusable (not JSONL at all): maps to one 4xx, no per-line list."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RowError(Exception):
    def __init__(self, field_: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.field, self.code, self.message = field_, code, message


@dataclass
class ParseResult:
    """What one pass over a file found. ``errors`` is capped; ``errors_total`` is exact."""

    total_lines: int = 0
    blank_lines: int = 0
    valid: int = 0
    invalid: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_total: int = 0
    error_codes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    bom: bool = False
    crlf: bool = False
    bytes_read: int = 0
    sha256: str = ""

    @property
    def format(self) -> str | None:
        if not self.formats:
            return None
        return next(iter(self.formats)) if len(self.formats) == 1 else "mixed"


# -- row normalisation ------------------------------------------------------------------
def _text(obj: dict, key: str, *, required: bool = True) -> str:
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise RowError(key, "missing_field", f"missing required field '{key}'")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise RowError(key, "wrong_type", f"'{key}' must be a string, got {_tname(value)}")
    if required and not value.strip():
        raise RowError(key, "empty_field", f"'{key}' is empty")
    return value


def _tname(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _instruction_messages(obj: dict) -> list[dict[str, str]]:
    instruction = _text(obj, "instruction")
    inp = _text(obj, "input", required=False)
    output = _text(obj, "output")
    user = f"{instruction}\n\n{inp}" if inp.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _chat_messages(obj: dict) -> list[dict[str, str]]:
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        raise RowError("messages", "wrong_type", f"'messages' must be an array, got {_tname(msgs)}")
    if not msgs:
        raise RowError("messages", "empty_field", "'messages' is empty")
    out: list[dict[str, str]] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RowError(where, "wrong_type", f"'{where}' must be an object, got {_tname(m)}")
        role = m.get("role")
        if "role" not in m:
            raise RowError(f"{where}.role", "missing_field", f"missing required field '{where}.role'")
        if role not in ROLES:
            raise RowError(f"{where}.role", "unknown_role",
                           f"unknown role {str(role)[:40]!r} (allowed: system, user, assistant)")
        if "content" not in m:
            raise RowError(f"{where}.content", "missing_field",
                           f"missing required field '{where}.content'")
        content = m["content"]
        if not isinstance(content, str):
            raise RowError(f"{where}.content", "wrong_type",
                           f"'{where}.content' must be a string, got {_tname(content)}")
        if not content.strip() and role != "system":
            raise RowError(f"{where}.content", "empty_field", f"'{where}.content' is empty")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise RowError(f"messages[{len(out) - 1}].role", "last_not_assistant",
                       "the last message must be the assistant answer (the training target)")
    if not any(m["role"] == "user" for m in out):
        raise RowError("messages", "no_user_message", "'messages' has no user message")
    return out


def normalize_row(obj: Any) -> tuple[list[dict[str, str]], str]:
    """Return ``(messages, format)`` for one parsed row, or raise :class:`RowError`."""
    if not isinstance(obj, dict):
        raise RowError(None, "not_an_object", f"each line must be a JSON object, got {_tname(obj)}")
    if "messages" in obj:
        if "instruction" in obj or "output" in obj:
            raise RowError("messages", "ambiguous_format",
                           "row has both 'messages' and 'instruction'/'output'; use one form")
        return _chat_messages(obj), "chat"
    if "instruction" in obj or "output" in obj:
        return _instruction_messages(obj), "instruction"
    raise RowError(None, "unknown_format",
                   "row needs 'instruction' + 'output' (article form) or 'messages' (chat form)")


def canonical_bytes(messages: list[dict[str, str]]) -> bytes:
    """The normalised row as compact UTF-8 JSON; what the content hash and dup checks use."""
    return orjson.dumps(messages)


def canonical(messages: list[dict[str, str]]) -> str:
    return orjson.dumps(messages).decode()


def row_digest(canon: str | bytes) -> bytes:
    data = canon.encode("utf-8") if isinstance(canon, str) else canon
    return hashlib.blake2b(data, digest_size=16).digest()


# -- whole files ------------------------------------------------------------------------
def sniff(head: bytes) -> None:
    """Reject things that are not UTF-8 JSONL before reading them line by line."""
    if head.startswith(b"\x1f\x8b"):
        raise UploadRejected(415, "compressed_upload",
                             "the file is gzip-compressed; decompress it and upload plain JSONL")
    if head.startswith((b"PK\x03\x04", b"BZh", b"\xfd7zXZ", b"(\xb5/\xfd")):
        raise UploadRejected(415, "compressed_upload",
                             "the file is an archive/compressed (zip, bz2, xz or zstd); "
                             "upload plain JSONL")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UploadRejected(415, "unsupported_encoding",
                             "the file is UTF-16 encoded; upload UTF-8 JSONL")
    if head.startswith(b"PAR1"):
        raise UploadRejected(415, "unsupported_format", "the file is Parquet; upload JSONL")


class StreamValidator:
    """One pass over a binary JSONL stream; see the module docstring."""

    def __init__(self, *, max_line_bytes: int, max_errors: int = 100,
                 max_bytes: int | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_errors = max_errors
        self.max_bytes = max_bytes

    def _error(self, res: ParseResult, line: int, field_: str | None, code: str, msg: str) -> None:
        res.invalid += 1
        res.errors_total += 1
        res.error_codes[code] += 1
        if len(res.errors) < self.max_errors:
            res.errors.append({"line": line, "field": field_, "code": code, "message": msg})

    def run(self, src: IO[bytes], out: IO[bytes] | None = None,
            on_row: Callable[[int, list[dict[str, str]], str], None] | None = None,
            ) -> ParseResult:
        """Validate ``src``; write each valid row as a JSON line to ``out``; hash them."""
        res = ParseResult()
        head = src.read(4)
        if not head:
            raise UploadRejected(400, "empty_file", "the file is empty")
        sniff(head)
        src.seek(0)
        sha = hashlib.sha256()
        limit = self.max_line_bytes
        readline = src.readline
        loads = orjson.loads
        dumps = orjson.dumps
        lineno = 0
        while True:
            raw = readline(limit + 1)
            if not raw:
                break
            lineno += 1
            res.bytes_read += len(raw)
            if len(raw) > limit and not raw.endswith(b"\n"):
                res.bytes_read += self._drain(src)
                self._check_size(res)
                self._error(res, lineno, None, "line_too_long",
                            f"line is longer than the {limit} byte limit (DATASET_MAX_LINE_BYTES)")
                continue
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[3:]
                res.bom = True
            if raw.endswith(b"\r\n"):
                res.crlf = True
            if lineno % 4096 == 0:
                self._check_size(res)
            stripped = raw.strip()
            if not stripped:
                res.blank_lines += 1
                continue
            try:
                obj = loads(stripped)
            except orjson.JSONDecodeError as exc:
                self._bad_line(res, lineno, stripped, exc)
                continue
            try:
                messages, fmt = normalize_row(obj)
            except RowError as exc:
                self._error(res, lineno, exc.field, exc.code, exc.message)
                continue
            canon = dumps(messages)
            sha.update(canon)
            sha.update(b"\n")
            res.valid += 1
            res.formats[fmt] += 1
            if out is not None:
                out.write(b'{"messages":%s,"line":%d}\n' % (canon, lineno))
            if on_row is not None:
                on_row(lineno, messages, fmt)
        self._check_size(res)
        res.total_lines = lineno
        res.sha256 = sha.hexdigest()
        return res

    def _bad_line(self, res: ParseResult, lineno: int, raw: bytes, exc: Exception) -> None:
        """Name the problem of a line that did not parse: its encoding, or its JSON."""
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            self._error(res, lineno, None, "invalid_utf8",
                        f"line is not valid UTF-8 (byte {uexc.start}: {raw[uexc.start:uexc.start + 1]!r})")
            return
        self._error(res, lineno, None, "invalid_json", f"invalid JSON: {exc}")

    def _drain(self, src: IO[bytes]) -> int:
        """Skip the rest of an over-long line in bounded chunks; return bytes skipped."""
        n = 0
        while True:
            chunk = src.readline(_DRAIN_CHUNK)
            n += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return n

    def _check_size(self, res: ParseResult) -> None:
        if self.max_bytes is not None and res.bytes_read > self.max_bytes:
            raise UploadRejected(413, "payload_too_large",
                                 f"upload is larger than {self.max_bytes} bytes (DATASET_MAX_UPLOAD_BYTES)")
