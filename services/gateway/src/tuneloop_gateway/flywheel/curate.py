"""Curate: feedback on captured answers, the review queue, and accepted rows -> a new dataset
version (with lineage naming the captures) -> optionally a training job through the same gate.

The answer a row is trained on: the reviewer's edit, else the user's corrected answer, else the
model's own answer (only when nobody said it was wrong: a thumbs-down without a correction or
an edit cannot be accepted).
"""

from __future__ import annotations

import asyncio
import builtins
from typing import Any, Literal

from tuneloop.clients.dataset import DatasetClient
from tuneloop.clients.trainer import TrainerClient
from tuneloop.db import Database
from tuneloop.errors import NotFound, Unprocessable
from tuneloop.textmetrics import parse_json, rouge_l, tokens
from tuneloop.offload import offload

from ..auth import Principal
from ..db import Capture
from ..repository.captures import CaptureRepository
from ..settings import GatewaySettings
from .answers import training_answer
from .capture import CaptureRecorder
from .drift import IndexCache, TrainingIndex, drift_report, prompt_text, shingles, text_of
from .masking import mask


def capture_view(row: Capture, *, full: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id, "object": "capture", "response_id": row.response_id, "key_id": row.key_id,
        "endpoint": row.endpoint, "model": row.model, "served_model": row.served_model,
        "stream": row.stream, "finish_reason": row.finish_reason, "latency_s": row.latency_s,
        "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
        "masked": row.masked, "created_at": row.created_at,
        "feedback": ({"rating": row.rating, "correction": row.correction, "comment": row.comment,
                      "created_at": row.feedback_at} if row.feedback_at else None),
        "status": row.status, "edited_output": row.edited_output, "reviewed_at": row.reviewed_at,
        "dataset_id": row.dataset_id, "training_answer": training_answer(row),
        "metrics": answer_metrics(row),
    }
    if row.canary_id:  # routed by a canary: which arm answered (shadow: recorded, not returned)
        view["canary"] = {"id": row.canary_id, "arm": row.canary_arm}
    if full:
        view["messages"] = row.messages
        view["output"] = row.output
    return view


def answer_metrics(row: Capture) -> dict[str, Any]:
    """The task metrics the evals use, applied to the captured answer: JSON validity, and its
    ROUGE-L agreement with the user's correction when there is one."""
    return {"json_valid": parse_json(row.output) is not None,
            "agreement": round(rouge_l(row.output, row.correction), 4)
            if row.correction is not None else None}


def training_row(row: Capture) -> dict[str, Any]:
    """The captured conversation as a chat training row (text content only)."""
    msgs = [{"role": m.get("role", "user"), "content": text_of(m.get("content"))}
            for m in row.messages if m.get("role") in ("system", "user", "assistant")]
    return {"messages": msgs + [{"role": "assistant", "content": training_answer(row) or ""}]}


class CurateService:
    def __init__(self, settings: GatewaySettings, db: Database, recorder: CaptureRecorder,
                 dataset: DatasetClient, trainer: TrainerClient) -> None:
        self.settings = settings
        self.repo = CaptureRepository(db)
        self.recorder = recorder
        self.dataset = dataset
        self.trainer = trainer
        self.indexes = IndexCache()
        self._index_lock = asyncio.Lock()

    # -- feedback (any key, on its own answers) ----------------------------------------------
    async def feedback(self, principal: Principal, response_id: str, rating: str | None,
                       correction: str | None, comment: str | None) -> dict[str, Any]:
        """Feedback on a captured answer of this key (an admin key: of any key), masked
        before it is stored."""
        correction, comment = await offload(_masked, correction, comment)
        key_id = None if principal.allows("admin") else principal.key_id
        row = await self.repo.feedback(response_id, key_id, rating, correction, comment)
        if row is None:  # the answer may still be on its way to the table (queued or
            await self.recorder.flush()  # being written): wait for the writer, at most 5 s
            row = await self.repo.feedback(response_id, key_id, rating, correction, comment)
        if row is None:
            raise NotFound(f"no captured response '{response_id[:100]}' for this key (capture is "
                           "opt-in per key and model; see docs/flywheel.md)",
                           code="response_not_found", param="response_id")
        return {"object": "response.feedback", "response_id": response_id, "capture_id": row.id,
                "rating": row.rating, "correction": row.correction, "comment": row.comment,
                "created_at": row.feedback_at}

    # -- the review queue (admin) --------------------------------------------------------------
    async def list(self, filters: dict[str, Any], offset: int,
                   limit: int) -> tuple[list[Capture], int]:
        """Captures matching ``filters``, newest first, and how many match in all."""
        return await self.repo.page(filters, offset, limit)

    async def get(self, capture_id: str) -> Capture:
        return await self.repo.get(capture_id)

    async def review(self, accept: builtins.list[str], reject: builtins.list[str],
                     edit: builtins.list[dict[str, str]]) -> dict[str, int]:
        """Accept, reject or edit (= accept with this answer, masked) rows, all or nothing."""
        ids = accept + reject + [e["id"] for e in edit]
        if len(set(ids)) != len(ids):
            raise Unprocessable("a capture id appears more than once in one review",
                                code="duplicate_capture_id")
        masked = await offload(_masked_edits, edit) if edit else []
        await self.repo.review(accept, reject, masked)
        return {"accepted": len(accept), "edited": len(edit), "rejected": len(reject)}

    # -- similarity to a training set ------------------------------------------------------
    async def index(self, dataset_id: str) -> TrainingIndex:
        async with self._index_lock:
            idx = self.indexes.get(dataset_id)
            if idx is None:
                rows = await self.dataset.all_rows(dataset_id, "train",
                                                   limit=self.settings.drift_max_training_rows)
                prompts = [prompt_text(r.get("messages") or []) for r in rows]
                idx = await offload(TrainingIndex.build, prompts)
                self.indexes.put(dataset_id, idx)
            return idx

    async def similarities(self, dataset_id: str, rows: builtins.list[Capture]) -> dict[str, float]:
        idx = await self.index(dataset_id)

        def run() -> dict[str, float]:
            return {r.id: round(idx.nearest(shingles(tokens(prompt_text(r.messages)))), 4)
                    for r in rows}
        return await offload(run)

    async def drift(self, dataset_id: str, filters: dict[str, Any], limit: int,
                    **limits: float) -> dict[str, Any]:
        idx = await self.index(dataset_id)
        rows, _ = await self.repo.page(filters, 0, limit)
        prompts = [prompt_text(r.messages) for r in rows]
        report = await offload(drift_report, idx, prompts, **limits)
        return {**report, "dataset_id": dataset_id, "filters": {k: v for k, v in filters.items()
                                                                if v is not None}}

    # -- publish and retrain ---------------------------------------------------------------------
    async def publish(self, base_dataset_id: str | None, name: str | None,
                      ids: builtins.list[str] | None) -> dict[str, Any]:
        """Accepted, unpublished captures (all, or ``ids``) + the base version's rows -> a new
        dataset version. The base's eval split is kept as the eval split, so the new version's
        gate compares on the same held-out rows."""
        rows = await self._publishable(ids)
        train = [training_row(r) for r in rows]
        eval_rows = None
        if base_dataset_id:
            base = await self.dataset.all_rows(base_dataset_id, "train")
            eval_rows = [{"messages": r["messages"]} for r in
                         await self.dataset.all_rows(base_dataset_id, "eval")]
            train = [{"messages": r["messages"]} for r in base] + train
        lineage = {"parent_dataset_id": base_dataset_id, "captures": [r.id for r in rows],
                   "responses": [r.response_id for r in rows if r.response_id]}
        ds = await self.dataset.create_from_rows(
            train, eval_rows=eval_rows or None, name=name or "captured", lineage=lineage)
        await self.repo.mark_published([r.id for r in rows], ds.id)
        return {"object": "capture.publication", "dataset": ds.to_dict(),
                "parent_dataset_id": base_dataset_id, "captures": len(rows),
                "capture_ids": lineage["captures"]}

    async def _publishable(self, ids: builtins.list[str] | None) -> builtins.list[Capture]:
        rows = await self.repo.publishable(ids)
        if ids is not None and len(rows) != len(set(ids)):
            got = {r.id for r in rows}
            bad = [i for i in ids if i not in got]
            raise Unprocessable(f"not accepted-and-unpublished captures: {', '.join(bad[:10])}",
                                code="capture_not_publishable", details={"ids": bad[:100]})
        if not rows:
            raise Unprocessable("no accepted captures to publish; review first",
                                code="no_accepted_captures")
        return rows

    async def retrain(self, base_dataset_id: str, base_model: str, *, name: str | None,
                      ids: builtins.list[str] | None,
                      backend: Literal["auto", "unsloth", "peft"],
                      hyperparameters: dict[str, Any] | None,
                      gate_alias: str | None) -> dict[str, Any]:
        """publish + a training job on the new version; the job calls this gateway back when it
        ends, so its candidate meets the same gate as any other."""
        pub = await self.publish(base_dataset_id, name, ids)
        job = await self.trainer.create_job(
            pub["dataset"]["id"], base_model, backend=backend, hyperparameters=hyperparameters,
            callback_url=self.settings.callback_url(), gate_alias=gate_alias)
        return {**pub, "object": "capture.retrain", "job": job.to_dict()}


def _masked(*texts: str | None) -> tuple[str | None, ...]:
    """Each text masked (None stays None): what users write is stored masked, like what they
    sent."""
    return tuple(mask(t)[0] if t is not None else None for t in texts)


def _masked_edits(edit: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"id": e["id"], "output": mask(e["output"])[0]} for e in edit]
