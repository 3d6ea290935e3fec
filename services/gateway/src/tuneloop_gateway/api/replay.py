"""``POST /v1/replay-rows``: replay rows against catastrophic forgetting, made by the base model.

A narrow fine-tune teaches a small model to answer everything in the task's format; rehearsal
(mixing general rows into the train split) is the standard remedy. Offline there is no general
instruction data at hand, so the served base model supplies it: it answers general prompts
(``tuneloop.examples.general_replay``, disjoint from the gateway's general-capability suite, so
the forgetting check never trains on its own test) and its own greedy answers become rows.
Cut-off, empty or failed answers are dropped with their reason.

The design splits the work by who can do it: the gateway reaches the served models, the dataset
service owns versions. The rows come back here; the client passes them as ``replay_rows`` to
``POST /v1/datasets``, which puts them in the train split only, spread evenly, as part of the
version (``counts.replay``, ``report.split.replay``).
"""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from tuneloop.errors import ServiceUnavailable
from tuneloop.examples.general_replay import REPLAY_PROMPTS, build_replay_rows, replay_prompts
from tuneloop.offload import offload

from ..auth import require_admin
from ..evals.report import load_general_suite
from .deps import SettingsDep

router = APIRouter(prefix="/v1/replay-rows", tags=["datasets"], dependencies=[Depends(require_admin)])


class ReplayRequest(BaseModel):
    model: str | None = Field(None, max_length=300, description="Served model that answers "
                              "(default: the base deployment, GATEWAY_BASE_MODEL_NAME).")
    n: int = Field(64, ge=1, le=len(REPLAY_PROMPTS), description="Prompts asked (some answers "
                   "may be dropped).")
    seed: int = Field(42, description="Which prompts, in which order.")
    max_tokens: int = Field(48, ge=4, le=512, description="Longest answer; cut-off answers are dropped.")
    concurrency: int = Field(4, ge=1, le=32)


@router.post("", summary="Replay rows against forgetting, answered by the base model")
async def replay_rows(body: ReplayRequest, s: SettingsDep) -> dict:
    model = body.model or s.base_model_name
    suite = [it["question"] for it in await offload(load_general_suite)]
    prompts = replay_prompts(body.n, seed=body.seed, exclude=suite)
    headers = {"Authorization": f"Bearer {s.inference_api_key}"} if s.inference_api_key else {}
    url = s.inference_url.rstrip("/") + "/v1/chat/completions"

    def build() -> tuple[list[dict], list[dict]]:
        with httpx.Client(timeout=httpx.Timeout(s.inference_timeout_s, connect=s.connect_timeout_s),
                          headers=headers) as http:
            def ask(prompt: str) -> tuple[str, str | None]:
                resp = http.post(url, json={"model": model, "temperature": 0, "max_tokens": body.max_tokens,
                                            "messages": [{"role": "user", "content": prompt}]})
                resp.raise_for_status()
                choice = resp.json()["choices"][0]
                return choice["message"].get("content") or "", choice.get("finish_reason")

            return build_replay_rows(ask, prompts, concurrency=body.concurrency)

    rows, dropped = await offload(build)
    if not rows and dropped and all(d["reason"].startswith("request failed") for d in dropped):
        raise ServiceUnavailable(f"model '{model}' did not answer: {dropped[0]['reason']}",
                                 code="replay_model_unavailable")
    return {"object": "list", "model": model, "data": rows, "dropped": dropped,
            "asked": len(prompts)}
