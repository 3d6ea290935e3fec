"""Dataset domain logic: ingest (validate, split, report, store, version), read, lease, delete.

Never imports FastAPI. What the API calls is ``async``: the database is reached through
:class:`.repository.DatasetRepository` (its methods run in a worker thread), and the blocking
rest (parsing and building an upload, files, the artifact store, tokenizers) is awaited through
:func:`tuneloop.offload.offload`, so nothing here blocks the event loop. The synchronous helpers
(``parse``, ``_parse``, ``_version``, ``_report``, ...) are only ever run that way.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
from array import array
import hashlib
import json
import logging
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import numpy as np

from tuneloop import layout
from tuneloop.db import Database
from tuneloop.errors import InvalidRequest, TuneloopError, Unprocessable
from tuneloop.ids import content_id, require_id
from tuneloop.offload import offload
from tuneloop.storage import ArtifactStore

from .db import DatasetRow
from .metrics import DatasetMetrics
from .parsing import ParseResult, StreamValidator, UploadRejected, row_digest, canonical
from .quality import ReportBuilder, text_summary
from .repository import DatasetRepository
from .schemas import UploadOptions
from .settings import DatasetSettings
from .storage_io import SplitWriter, artifact_keys, iter_jsonl, iter_stored, read_rows, write_hf

log = logging.getLogger("tuneloop.dataset")

Input = IO[bytes] | Path  # an open upload, or a file the worker thread opens


class DatasetInvalid(Unprocessable):
    code = "dataset_invalid"


def eval_rule(n: int) -> int:
    """Default held-out size: 10% clamped to the article's 100..200 rows, but never more
    than 20% of the data (small sets keep most rows for training); at least 1 when n >= 2."""
    if n < 2:
        return 0
    size = min(200, max(100, round(0.1 * n)), int(0.2 * n))
    return max(1, size)


def resolve_eval_size(n: int, opts: UploadOptions) -> tuple[int, str]:
    if opts.eval_size is not None:
        if opts.eval_size >= n and opts.eval_size > 0:
            raise InvalidRequest(f"eval_size={opts.eval_size} must be smaller than the {n} valid rows",
                                 code="invalid_eval_size", param="eval_size")
        return opts.eval_size, "eval_size"
    if opts.eval_fraction is not None:
        size = round(n * opts.eval_fraction)
        return (min(max(size, 1), n - 1) if n >= 2 else 0), "eval_fraction"
    return eval_rule(n), "default (10% clamped to 100..200, at most 20%)"


def split_key(seed: int, messages: list[dict[str, str]]) -> bytes:
    """Order-free split key: identical rows get the same key, so they land in the same split."""
    return hashlib.blake2b(row_digest(canonical(messages)), digest_size=8,
                           key=str(seed).encode()).digest()


@dataclass
class Ingested:
    dataset: dict[str, Any]
    created: bool


@dataclass
class Parsed:
    """An upload's validated files (in the work folder) and how its eval split is sized."""

    main: ParseResult
    ev: ParseResult | None
    rp: ParseResult | None
    eval_n: int
    method: str
    digest: str  # of the rows and the split options: the version's id

    @property
    def id(self) -> str:
        return content_id("ds", self.digest)


class DatasetService:
    def __init__(self, settings: DatasetSettings, db: Database, store: ArtifactStore,
                 metrics: DatasetMetrics) -> None:
        self.settings = settings
        self.repo = DatasetRepository(db)
        self.store = store
        self.metrics = metrics
        self.tmp_root = (settings.data_dir / "tmp" / "dataset").resolve()
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        self._tokenizers: dict[str, Any] = {}
        self._tok_lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def tmp_dir(self, prefix: str | None = None) -> AsyncIterator[Path]:
        """A fresh folder under ``tmp_root`` (an upload can be large), made and removed off
        the loop; removed even when the request is cancelled."""
        tmp = Path(await offload(tempfile.mkdtemp, prefix=prefix, dir=self.tmp_root))
        try:
            yield tmp
        finally:
            with anyio.CancelScope(shield=True):
                await offload(shutil.rmtree, tmp, True)

    def validator(self) -> StreamValidator:
        s = self.settings
        return StreamValidator(max_line_bytes=s.max_line_bytes, max_errors=s.max_errors_reported,
                               max_bytes=s.max_upload_bytes)

    def load_tokenizer(self, name: str | None, *, explicit: bool) -> tuple[Any, str | None]:
        """(tokenizer, note). An explicit bad name is a 400; a bad default only a note."""
        if not name:
            return None, ("no tokenizer given (option `tokenizer` or DATASET_DEFAULT_TOKENIZER): "
                          "token statistics skipped")
        with self._tok_lock:
            if name in self._tokenizers:
                return self._tokenizers[name], None
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(name, local_files_only=not self.settings.hub_enabled)
            except Exception as exc:  # any load failure is reported the same way
                if explicit:
                    raise InvalidRequest(f"cannot load tokenizer {name[:200]!r}: {str(exc)[:300]}",
                                         code="tokenizer_not_found", param="tokenizer") from exc
                return None, f"default tokenizer {name!r} could not be loaded: token statistics skipped"
            self._tokenizers[name] = tok
            return tok, None

    # -- ingest ------------------------------------------------------------------------
    def parse(self, src: IO[bytes], out_path: Path, which: str) -> ParseResult:
        t0 = time.perf_counter()
        try:
            with open(out_path, "wb") as out:
                res = self.validator().run(src, out)
        except UploadRejected as exc:
            param = which if which in ("eval_file", "replay_rows") else "file"
            raise TuneloopError(exc.message, code=exc.code, status=exc.status, param=param) from exc
        finally:
            self.metrics.validation_seconds.observe(time.perf_counter() - t0)
        self.metrics.rows_validated.labels("valid").inc(res.valid)
        self.metrics.rows_validated.labels("invalid").inc(res.invalid)
        if which in ("eval_file", "replay_rows"):
            for e in res.errors:
                e["file"] = which
        return res

    async def ingest(self, src: Input, opts: UploadOptions, source: dict[str, Any],
                     eval_src: Input | None = None, replay_src: Input | None = None) -> Ingested:
        """Validate, split, report and store one upload; return the (new or existing) version.

        ``replay_src``: replay rows against forgetting (general prompts answered by the base
        model, e.g. from the gateway's ``POST /v1/replay-rows``). They go to the train split
        only, spread evenly through it; one whose prompt is an eval prompt is dropped (it would
        leak); they are part of the version's content hash."""
        async with self.tmp_dir("ingest-") as work:
            parsed = await offload(self._parse, work, src, opts, eval_src, replay_src)
            found = await self.repo.find(parsed.id)
            if found is not None:
                self.metrics.uploads.labels("existing").inc()
                return Ingested(self._to_api(*found), False)
            stage = await offload(self.store.staging_dir, layout.dataset(parsed.id))
            try:
                row = await offload(self._version, work, stage, parsed, opts, source)
                created = await self.repo.add(row, functools.partial(self._place, stage, row.id))
            finally:
                with anyio.CancelScope(shield=True):
                    await offload(shutil.rmtree, stage, True)
        if not created:
            self.metrics.uploads.labels("existing").inc()
            return Ingested(self._to_api(*await self.repo.get(row.id)), False)
        self.metrics.uploads.labels("created").inc()
        await self.refresh_gauge()
        log.info("dataset stored", extra={"dataset_id": row.id, "rows": parsed.main.valid})
        return Ingested(self._to_api(row, []), True)  # no lease can predate the version

    def _parse(self, work: Path, src: Input, opts: UploadOptions, eval_src: Input | None,
               replay_src: Input | None) -> Parsed:
        """Validate the upload's files into ``work``, check them, size the eval split."""
        with contextlib.ExitStack() as stack:
            def opened(f: Input) -> IO[bytes]:
                return stack.enter_context(open(f, "rb")) if isinstance(f, Path) else f

            main = self.parse(opened(src), work / "rows.jsonl", "file")
            ev = (self.parse(opened(eval_src), work / "eval.jsonl", "eval_file")
                  if eval_src is not None else None)
            rp = (self.parse(opened(replay_src), work / "replay.jsonl", "replay_rows")
                  if replay_src is not None else None)
        self._check_parse(main, ev, opts)
        if rp is not None and (rp.invalid or not rp.valid):
            first: dict[str, Any] = rp.errors[0] if rp.errors else {"line": 0, "message": "no rows"}
            raise DatasetInvalid(f"replay_rows: {rp.invalid} invalid rows (first: row {first['line']}: "
                                 f"{first['message'][:200]})" if rp.invalid else "replay_rows is empty",
                                 param="replay_rows", details={"errors": rp.errors[:20]})
        if ev is not None:
            eval_n, method = ev.valid, "eval_file"
        else:
            eval_n, method = resolve_eval_size(main.valid, opts)
        split_opts = {"seed": opts.seed, "eval_size": opts.eval_size,
                      "eval_fraction": opts.eval_fraction, "eval_file": ev is not None}
        digest = hashlib.sha256(
            ("tuneloop-dataset-v1\n" + main.sha256 + "\n" + (ev.sha256 if ev else "-") + "\n"
             + json.dumps(split_opts, sort_keys=True)
             + (f"\nreplay:{rp.sha256}" if rp else "")).encode()).hexdigest()
        return Parsed(main, ev, rp, eval_n, method, digest)

    def _version(self, work: Path, stage: Path, p: Parsed, opts: UploadOptions,
                 source: dict[str, Any]) -> DatasetRow:
        """Split, report and write the version's artifacts into ``stage``; its row."""
        tokenizer_name = opts.tokenizer or self.settings.default_tokenizer
        tok, note = self.load_tokenizer(tokenizer_name, explicit=bool(opts.tokenizer))
        eval_lines = self._choose_eval(work / "rows.jsonl", p.eval_n, opts.seed) if p.ev is None else None
        report = self._build(work, stage, p.main, p.ev, eval_lines, opts, tok, tokenizer_name, note,
                             {"method": p.method, "seed": opts.seed}, p.rp)
        return DatasetRow(
            id=p.id, name=opts.name or source.get("filename") or "dataset", status="ready",
            format=self._format(p.main, p.ev), created_at=int(time.time()),
            counts=self._counts(p.main, p.ev, report), warnings=report["warnings"],
            options=opts.model_dump(exclude={"name"}), source=source,
            content_sha256=p.digest, bytes=p.main.bytes_read + (p.ev.bytes_read if p.ev else 0))

    def _check_parse(self, main: ParseResult, ev: ParseResult | None, opts: UploadOptions) -> None:
        parts = [main] + ([ev] if ev else [])
        invalid = sum(p.invalid for p in parts)
        details: dict[str, Any] = {
            "errors": (main.errors + (ev.errors if ev else []))[: self.settings.max_errors_reported],
            "errors_total": invalid,
            "errors_truncated": invalid > self.settings.max_errors_reported,
            "error_codes": dict(main.error_codes + (ev.error_codes if ev else Counter())),
            "counts": {"total_lines": main.total_lines, "blank_lines": main.blank_lines,
                       "valid": main.valid, "invalid": main.invalid},
        }
        if ev:
            details["eval_counts"] = {"total_lines": ev.total_lines, "valid": ev.valid,
                                      "invalid": ev.invalid}
        if main.valid == 0 and main.invalid == 0:
            raise DatasetInvalid("the file contains no rows (only blank lines)", code="no_rows",
                                 param="file", details=details)
        if ev is not None and ev.valid == 0 and ev.invalid == 0:
            raise DatasetInvalid("the eval file contains no rows (only blank lines)",
                                 code="no_rows", param="eval_file", details=details)
        if invalid and opts.on_invalid == "reject":
            first = details["errors"][0]
            raise DatasetInvalid(
                f"{invalid} invalid rows (first: line {first['line']}"
                f"{', field ' + first['field'] if first['field'] else ''}: {first['message'][:200]}); "
                "fix them or upload with on_invalid=skip", details=details, param="file")
        if main.valid == 0 or (ev is not None and ev.valid == 0):
            raise DatasetInvalid("no valid rows left after skipping invalid ones",
                                 code="no_valid_rows", param="file", details=details)

    def _choose_eval(self, rows_path: Path, eval_n: int, seed: int) -> set[int]:
        if eval_n <= 0:
            return set()
        keys, lines = array("Q"), array("q")
        for line, msgs in iter_jsonl(rows_path):
            keys.append(int.from_bytes(split_key(seed, msgs), "big"))
            lines.append(line)
        order = np.lexsort((np.frombuffer(lines, dtype=np.int64), np.frombuffer(keys, dtype=np.uint64)))
        return {int(lines[i]) for i in order[:eval_n]}

    def _build(self, work: Path, stage: Path, main: ParseResult, ev: ParseResult | None,
               eval_lines: set[int] | None, opts: UploadOptions, tok: Any,
               tokenizer_name: str | None, note: str | None,
               split_info: dict[str, Any], rp: ParseResult | None = None) -> dict[str, Any]:
        s = self.settings
        replay, leaked = self._replay_rows(work, eval_lines, ev) if rp else ([], 0)
        train_n = main.valid - (len(eval_lines) if eval_lines is not None else 0)
        placed = 0
        builder = ReportBuilder(
            tokenizer=tok, tokenizer_name=tokenizer_name, tokenizer_note=note,
            max_seq_length=opts.max_seq_length or s.default_max_seq_length,
            near_threshold=s.near_dup_threshold, num_perm=s.near_dup_num_perm,
            near_max_rows=s.near_dup_max_rows, short_chars=s.short_output_chars,
            preview_rows=s.preview_rows, expected_rows=main.valid + (ev.valid if ev else 0))
        writer = SplitWriter(stage)
        try:
            for line, msgs in iter_jsonl(work / "rows.jsonl"):
                split = "eval" if eval_lines is not None and line in eval_lines else "train"
                writer.add(split, line, msgs)
                builder.add(line, msgs, split)
                if split == "train":  # replay row j goes after train row (j+1)*T/(R+1)
                    seen = writer.counts["train"] - placed
                    while placed < len(replay) and (placed + 1) * train_n <= seen * (len(replay) + 1):
                        writer.add("train", -(placed + 1), replay[placed])  # line < 0: a replay row
                        placed += 1
            for j in range(placed, len(replay)):
                writer.add("train", -(j + 1), replay[j])
            if ev is not None:
                for line, msgs in iter_jsonl(work / "eval.jsonl"):
                    writer.add("eval", line, msgs)
                    builder.add(-line, msgs, "eval")  # negative: a line of the eval file
        finally:
            writer.close()
        write_hf(stage, work)
        empty_outputs = sum(
            1 for p in [main] + ([ev] if ev else []) for e in p.errors
            if e["code"] == "empty_field" and (e["field"] == "output" or str(e["field"]).endswith(".content")))
        parse_counts: dict[str, Any] = {"total_lines": main.total_lines, "blank_lines": main.blank_lines,
                        "valid": main.valid, "invalid": main.invalid,
                        "errors_total": main.errors_total, "empty_outputs": empty_outputs}
        if ev is not None:
            parse_counts["eval_file"] = {"total_lines": ev.total_lines, "valid": ev.valid,
                                         "invalid": ev.invalid}
        split_info.update(train=writer.counts["train"], eval=writer.counts["eval"])
        if rp is not None:
            split_info["replay"] = {"rows": len(replay), "dropped_eval_prompt": leaked,
                                    "note": "general rows against forgetting, train split only "
                                            "(line < 0 in the train split)"}
        report = builder.finish(parse=parse_counts, split=split_info)
        if main.bom:
            report["warnings"].append({"code": "utf8_bom_stripped",
                                       "message": "the file started with a UTF-8 BOM; it was ignored"})
        report["errors"] = (main.errors + (ev.errors if ev else []))[: s.max_errors_reported]
        report["format"] = self._format(main, ev)
        report["line_endings"] = "crlf" if main.crlf else "lf"
        with open(stage / "report.json", "w", encoding="utf-8") as fh:
            json.dump(report, fh, ensure_ascii=False)
        return report

    @staticmethod
    def _replay_rows(work: Path, eval_lines: set[int] | None,
                     ev: ParseResult | None) -> tuple[list[list[dict[str, str]]], int]:
        """The replay rows, less any whose prompt is also an eval prompt (that would leak)."""
        eval_prompts = set()
        if ev is not None:
            eval_prompts = {row_digest(canonical(m[:-1])) for _, m in iter_jsonl(work / "eval.jsonl")}
        elif eval_lines:
            eval_prompts = {row_digest(canonical(m[:-1])) for line, m in iter_jsonl(work / "rows.jsonl")
                            if line in eval_lines}
        rows = [m for _, m in iter_jsonl(work / "replay.jsonl")]
        kept = [m for m in rows if row_digest(canonical(m[:-1])) not in eval_prompts]
        return kept, len(rows) - len(kept)

    def _place(self, stage: Path, ds_id: str) -> None:
        """Move a staged version into the store: run by :meth:`DatasetRepository.add` inside
        the transaction that inserts its row."""
        key = layout.dataset(ds_id)
        if self.store.exists(key):  # left by a crash between rename and commit
            self.store.delete(key)
        self.store.put_dir(stage, key, move=True)

    @staticmethod
    def _format(main: ParseResult, ev: ParseResult | None) -> str | None:
        fmts = set(main.formats) | (set(ev.formats) if ev else set())
        return next(iter(fmts)) if len(fmts) == 1 else ("mixed" if fmts else None)

    @staticmethod
    def _counts(main: ParseResult, ev: ParseResult | None, report: dict[str, Any]) -> dict[str, int]:
        return {"total": main.total_lines - main.blank_lines + (ev.total_lines - ev.blank_lines if ev else 0),
                "valid": main.valid + (ev.valid if ev else 0),
                "invalid": main.invalid + (ev.invalid if ev else 0),
                "train": report["split"]["train"], "eval": report["split"]["eval"],
                **({"replay": report["split"]["replay"]["rows"]} if "replay" in report["split"] else {})}

    # -- reads -------------------------------------------------------------------------
    def _to_api(self, row: DatasetRow, holders: builtins.list[str]) -> dict[str, Any]:
        return {"id": row.id, "object": "dataset", "name": row.name, "status": row.status,
                "created_at": row.created_at, "counts": row.counts, "format": row.format,
                "warnings": row.warnings, "options": row.options, "source": row.source,
                "bytes": row.bytes, "artifacts": artifact_keys(row.id),
                "artifact_url": self.store.uri(layout.dataset(row.id)),
                "in_use_by": holders}

    async def get(self, ds_id: str) -> dict[str, Any]:
        require_id(ds_id, "ds", "dataset")
        return self._to_api(*await self.repo.get(ds_id))

    async def list(self, limit: int, offset: int) -> dict[str, Any]:
        rows = await self.repo.page(limit + 1, offset)
        return {"object": "list", "data": [self._to_api(*r) for r in rows[:limit]],
                "has_more": len(rows) > limit}

    async def rows(self, ds_id: str, split: str, offset: int, limit: int) -> dict[str, Any]:
        require_id(ds_id, "ds", "dataset")
        await self.repo.get(ds_id)
        data, total = await offload(read_rows, self.store,
                                    artifact_keys(ds_id)[f"{split}_parquet"], offset, limit)
        return {"object": "list", "data": data, "has_more": offset + len(data) < total,
                "total": total, "split": split, "offset": offset, "limit": limit}

    async def report(self, ds_id: str, tokenizer: str | None = None,
                     max_seq_length: int | None = None) -> dict[str, Any]:
        """The stored report; with ``tokenizer``/``max_seq_length`` its token section is
        recomputed from the stored rows (e.g. the trainer checking truncation for its base
        model before a job), the rest is as stored."""
        require_id(ds_id, "ds", "dataset")
        row, _ = await self.repo.get(ds_id)
        return await offload(self._report, row, tokenizer, max_seq_length)

    def _report(self, row: DatasetRow, tokenizer: str | None,
                max_seq_length: int | None) -> dict[str, Any]:
        ds_id = row.id
        keys = artifact_keys(ds_id)
        report = json.loads(self.store.read_bytes(keys["report"]))
        report["dataset_id"] = ds_id
        if tokenizer is None and max_seq_length is None:
            return report
        name = tokenizer or row.options.get("tokenizer") or self.settings.default_tokenizer
        tok, note = self.load_tokenizer(name, explicit=bool(tokenizer))
        limit = max_seq_length or row.options.get("max_seq_length") or self.settings.default_max_seq_length
        builder = ReportBuilder(tokenizer=tok, tokenizer_name=name, tokenizer_note=note,
                                max_seq_length=limit, near_max_rows=-1, expected_rows=0,
                                preview_rows=self.settings.preview_rows)
        own_eval = report.get("split", {}).get("method") == "eval_file"
        for split in ("train", "eval"):
            for r in iter_stored(self.store, keys[f"{split}_parquet"]):
                line = -r["line"] if own_eval and split == "eval" else r["line"]
                builder.add(line, r["messages"], split)
        tokens, tokens_note, preview = builder.token_section()
        report.update(tokens=tokens, tokens_note=tokens_note, preview=preview,
                      recomputed={"tokenizer": name, "max_seq_length": limit})
        report["warnings"] = [w for w in report["warnings"] if w["code"] != "truncated_rows"]
        if tokens and tokens["truncated"]["rows"]:
            report["warnings"].append({"code": "truncated_rows", "message":
                                       f"{tokens['truncated']['rows']} rows are longer than "
                                       f"max_seq_length={limit} tokens and would be truncated"})
        return report

    async def report_text(self, ds_id: str, tokenizer: str | None = None,
                          max_seq_length: int | None = None) -> str:
        return text_summary(await self.get(ds_id),
                            await self.report(ds_id, tokenizer, max_seq_length))

    # -- leases and delete -------------------------------------------------------------
    async def lease(self, ds_id: str, holder: str) -> dict[str, Any]:
        require_id(ds_id, "ds", "dataset")
        holders = await self.repo.lease(ds_id, holder)
        return {"object": "dataset.lease", "dataset_id": ds_id, "holder": holder,
                "in_use_by": holders}

    async def unlease(self, ds_id: str, holder: str) -> dict[str, Any]:
        require_id(ds_id, "ds", "dataset")
        holders = await self.repo.unlease(ds_id, holder)
        return {"object": "dataset.lease", "dataset_id": ds_id, "holder": holder,
                "deleted": True, "in_use_by": holders}

    async def delete(self, ds_id: str) -> dict[str, Any]:
        """Delete a version that no lease holds: its row and, in the same transaction, its
        artifacts moved aside to ``trash/``, emptied after the commit."""
        require_id(ds_id, "ds", "dataset")
        trash = f"trash/{ds_id}-{uuid.uuid4().hex[:8]}"
        await self.repo.delete(ds_id, functools.partial(self._to_trash, ds_id, trash))
        await offload(self._empty_trash, trash)
        await self.refresh_gauge()
        return {"id": ds_id, "object": "dataset.deleted", "deleted": True}

    def _to_trash(self, ds_id: str, trash: str) -> None:
        key = layout.dataset(ds_id)
        if self.store.exists(key):
            self.store.fs.makedirs(self.store.path("trash"), exist_ok=True)
            self.store.fs.mv(self.store.path(key), self.store.path(trash), recursive=True)

    def _empty_trash(self, trash: str) -> None:
        with contextlib.suppress(Exception):
            self.store.delete(trash)

    async def refresh_gauge(self) -> None:
        self.metrics.datasets_stored.set(await self.repo.count())

    def cleanup_tmp(self) -> None:
        """Remove work folders left by a crash (called at startup)."""
        for p in self.tmp_root.iterdir():  # private to this service; nothing runs yet
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        root = Path(self.store.root) / "datasets" if self.store.is_local else None
        if root and root.exists():
            for p in root.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
