"""OpenAI-compatible routes: validate, resolve alias -> version -> engine, pass through.

Bodies go to the engine as JSON with ``model`` rewritten to the served version id; answers
come back byte for byte (streams chunk by chunk, unbuffered, as SSE). Only what the engine
cannot do is translated here: ``n > 1`` on an engine without ``n`` is fanned out (non-streaming)
or rejected with 400 (streaming).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneloop import upstream
from tuneloop.errors import (InvalidRequest, NotFound, ServiceUnavailable, TuneloopError,
                             UpstreamError, UpstreamTimeout, error_body)
from tuneloop.offload import offloaded

from ..engines import Engine
from ..metrics import InferenceMetrics
from ..protocol import validate
from ..routing import RoutingTable
from .deps import RoutingDep, SettingsDep, authorize_openai, generation

router = APIRouter(tags=["openai"])


async def check_key(request: Request, settings: SettingsDep) -> None:
    """The key check of the non-generation OpenAI routes (see :func:`.deps.authorize_openai`)."""
    authorize_openai(request, settings)


keyed = [Depends(check_key)]


@router.get("/v1/models", dependencies=keyed)
async def list_models(routing: RoutingDep) -> dict[str, Any]:
    """Ready versions (by served id) and aliases on this replica."""
    return {"object": "list", "data": routing.list_models(), "has_more": False}


@router.get("/v1/models/{model:path}", dependencies=keyed)
async def get_model(model: str, routing: RoutingDep) -> dict[str, Any]:
    for item in routing.list_models():
        if item["id"] == model:
            return item
    raise NotFound(f"The model '{model[:200]}' does not exist", code="model_not_found",
                   param="model")


# The generation routes call the key check and read their services themselves (``generation``)
# instead of declaring a dependency: FastAPI solves declared dependencies per request, a cost on
# the hot path (bench/serve_load.py --profile).
@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    gen = generation(request)
    return await _proxy(request, gen.routing, gen.metrics, "chat")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    gen = generation(request)
    return await _proxy(request, gen.routing, gen.metrics, "completions")


# ---------------------------------------------------------------------------- proxy
async def _proxy(request: Request, routing: RoutingTable, metrics: InferenceMetrics,
                 endpoint: str) -> Response:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json")
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply", code="invalid_json") from None
    body = validate(endpoint, body)
    requested = body["model"]
    engine, served = routing.resolve(requested)
    engine.adapt_body(endpoint, body)
    await check_context_length(engine, endpoint, body)
    body["model"] = served
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    ctx = _Ctx(metrics, requested, served, endpoint, request.state.request_id)
    n = body.get("n") or 1
    if n > 1 and not engine.supports_n:
        if body.get("stream"):
            raise InvalidRequest(f"n: {engine.kind} engine generates one choice per request; "
                                 "n > 1 is only supported without streaming here", param="n",
                                 code="unsupported_parameter")
        return await _fan_out(engine, path, body, n, ctx)
    if body.get("stream"):
        return await _stream(engine, path, body, ctx)
    return await upstream.until_disconnect(request, _plain(engine, path, body, ctx))


def _text_bytes(endpoint: str, body: dict[str, Any]) -> int | None:
    """UTF-8 size of the prompt's text (>= its token count with byte-level and SentencePiece
    tokenizers), None if a message holds something else than text."""
    if endpoint != "chat":
        return len(body["prompt"].encode())
    total = 0
    for m in body["messages"]:
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    return None
                total += len(str(part.get("text", "")).encode())
        elif isinstance(content, str):
            total += len(content.encode())
        extra = {k: v for k, v in m.items() if k not in ("role", "content")}
        if extra:
            total += len(json.dumps(extra).encode())
    return total


async def check_context_length(engine: Engine, endpoint: str, body: dict[str, Any]) -> None:
    """400 ``context_length_exceeded`` when prompt tokens + ``max_tokens`` exceed the model's
    context length, before the request reaches the engine (an oversized request must not
    keep a model busy). Prompts whose UTF-8 size alone proves they fit are not tokenized."""
    limit = engine.context_length
    if not limit:
        return
    max_tokens = body.get("max_tokens")
    wanted = max_tokens if isinstance(max_tokens, int) else 1
    param = "max_tokens" if isinstance(max_tokens, int) else None

    def exceeded(prompt: int | None) -> InvalidRequest:  # noqa: ANN202
        what = (f"{prompt} prompt tokens" if prompt is not None else "at least one prompt token")
        more = f" + max_tokens {max_tokens}" if isinstance(max_tokens, int) else ""
        return InvalidRequest(
            f"This model's maximum context length is {limit} tokens; the request has {what}"
            f"{more}. Shorten the prompt or lower max_tokens.", code="context_length_exceeded",
            param=param or ("messages" if endpoint == "chat" else "prompt"),
            details={"context_length": limit, "prompt_tokens": prompt, "max_tokens": max_tokens})

    if wanted >= limit:
        raise exceeded(None)
    size = _text_bytes(endpoint, body)
    messages = len(body.get("messages") or [1])
    if size is not None and size + 16 * messages + 64 + wanted <= limit:
        return  # cannot exceed: every token covers at least one byte
    prompt = await offloaded(engine.count_prompt_tokens)(endpoint, body)
    if prompt is not None and prompt + wanted > limit:
        if param is None or prompt >= limit:  # the prompt alone is too long
            param = "messages" if endpoint == "chat" else "prompt"
        raise exceeded(prompt)


async def _admit(engine: Engine, ctx: "_Ctx") -> None:
    """A slot of the engine (bounded queue; 429 beyond), recorded in the metrics if refused."""
    try:
        await engine.admit()
    except TuneloopError as exc:
        ctx.done(exc.status, False)
        raise


class _Ctx:
    """Per-request bookkeeping for metrics."""

    def __init__(self, metrics: Any, requested: str, served: str, endpoint: str,
                 rid: str | None) -> None:
        self.metrics, self.requested, self.served, self.endpoint = metrics, requested, served, endpoint
        self.headers = {"content-type": "application/json", "x-request-id": rid or ""}
        self.t0 = time.perf_counter()
        metrics.in_flight.inc()

    def done(self, status: int, stream: bool, usage: dict | None = None) -> None:
        m = self.metrics
        m.in_flight.dec()
        m.requests.labels(self.requested, self.served, self.endpoint, str(status)).inc()
        m.latency.labels(self.requested, self.served, "true" if stream else "false").observe(
            time.perf_counter() - self.t0)
        if usage:
            m.tokens.labels(self.requested, self.served).inc(usage.get("completion_tokens") or 0)
            m.prompt_tokens.labels(self.requested, self.served).inc(usage.get("prompt_tokens") or 0)


def _engine_error(resp_status: int, content: bytes, engine: Engine) -> TuneloopError:
    """Map an engine's error answer (vLLM envelope or FastAPI ``detail``) into ours."""
    message = content.decode("utf-8", "replace")[:500]
    try:
        data = json.loads(content)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
        elif isinstance(err, str):
            message = err
        elif isinstance(data, dict) and "detail" in data:
            message = str(data["detail"]) if not isinstance(data["detail"], list) else \
                "; ".join(str(d.get("msg", d)) for d in data["detail"])
        elif isinstance(data, dict) and "message" in data:
            message = str(data["message"])
    except ValueError:
        pass
    if resp_status in (400, 422):
        return InvalidRequest(f"rejected by the {engine.kind} engine: {message}",
                              code="invalid_request")
    if resp_status == 404:
        return NotFound(message, code="model_not_found", param="model")
    if resp_status == 503:
        return ServiceUnavailable(f"{engine.kind} engine unavailable: {message}",
                                  code="engine_unavailable")
    return UpstreamError(f"{engine.kind} engine answered {resp_status}: {message}",
                         code="engine_error")


def _transport_error(exc: BaseException, engine: Engine) -> TuneloopError:
    if not engine.alive():  # crashed under us: the supervisor restarts it
        return ServiceUnavailable(f"{engine.kind} engine for '{engine.name}' is restarting",
                                  code="model_not_ready")
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"{engine.kind} engine timed out", code="engine_timeout")
    return UpstreamError(f"{engine.kind} engine unreachable: {exc.__class__.__name__}",
                         code="engine_unreachable")


_TRANSPORT = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, AttributeError)


async def _post(engine: Engine, path: str, body: dict, ctx: _Ctx) -> tuple[int, bytes]:
    """One request to the engine over its pooled aiohttp session (sent again if the engine
    closed the connection before answering: the idle keep-alive race). An engine that only
    aborts a *streamed* generation when its client goes (``transformers serve``) is asked for
    a stream, assembled here into the one answer: cancelling this call then stops the engine."""
    if engine.abort_needs_stream:
        return await _post_assembled(engine, path, body, ctx)
    resp = await upstream.send(engine.session, "POST", path, data=json.dumps(body).encode(),  # type: ignore[arg-type]
                               headers=ctx.headers)
    async with resp:
        return resp.status, await resp.read()


async def _post_assembled(engine: Engine, path: str, body: dict, ctx: _Ctx) -> tuple[int, bytes]:
    payload = json.dumps({**body, "stream": True}).encode()
    resp = await upstream.send(engine.session, "POST", path, data=payload, headers=ctx.headers)  # type: ignore[arg-type]
    try:
        if resp.status != 200 or "text/event-stream" not in resp.headers.get("content-type", ""):
            return resp.status, await resp.read()
        chat = path.endswith("chat/completions")
        merged: dict[str, Any] | None = None
        texts: list[str] = []
        tool_calls: dict[int, dict[str, Any]] = {}
        finish, usage = None, None
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        return 500, json.dumps(data).encode()
                    merged = merged or data
                    usage = data.get("usage") or usage
                    for choice in data.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        delta = choice.get("delta") or {} if chat else choice
                        if isinstance(delta.get("content" if chat else "text"), str):
                            texts.append(delta["content" if chat else "text"])
                        for tc in (delta.get("tool_calls") or []) if chat else []:
                            slot = tool_calls.setdefault(tc.get("index", 0), {
                                "id": tc.get("id"), "type": "function",
                                "function": {"name": "", "arguments": ""}})
                            fn = tc.get("function") or {}
                            slot["function"]["name"] += fn.get("name") or ""
                            slot["function"]["arguments"] += fn.get("arguments") or ""
        if merged is None:
            return 502, b'{"error": {"message": "engine stream carried no data"}}'
        text = "".join(texts)
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
            choice = {"index": 0, "message": message, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        out = {"id": merged.get("id"), "object": "chat.completion" if chat else "text_completion",
               "created": merged.get("created"), "model": merged.get("model"),
               "choices": [choice], "usage": usage}
        return 200, json.dumps(out).encode()
    finally:
        resp.close()  # complete or not: a half-read stream must not go back to the pool


async def _plain(engine: Engine, path: str, body: dict, ctx: _Ctx) -> Response:
    await _admit(engine, ctx)
    status = 502
    try:
        status, content = await _post(engine, path, body, ctx)
        if status != 200:
            raise _engine_error(status, content, engine)
        usage = None
        try:
            data = json.loads(content)
            usage = data.get("usage")
            if body.get("stop") and engine.fix_response(body, data):
                content = json.dumps(data).encode()
        except (ValueError, AttributeError):
            pass
        ctx.done(200, False, usage)
        status = 0
        return Response(content, media_type="application/json")
    except _TRANSPORT as exc:
        raise _transport_error(exc, engine) from exc
    except asyncio.CancelledError:  # the client went away
        status = 499
        raise
    finally:
        engine.leave()
        if status:
            ctx.done(status, False)


async def _fan_out(engine: Engine, path: str, body: dict, n: int, ctx: _Ctx) -> Response:
    """``n`` choices from an engine without ``n``: n concurrent requests, merged in order."""
    payload = {k: v for k, v in body.items() if k != "n"}
    await _admit(engine, ctx)
    status = 502
    try:
        answers = await asyncio.gather(*(_post(engine, path, payload, ctx) for _ in range(n)))
        bad = next((a for a in answers if a[0] != 200), None)
        if bad is not None:
            status = bad[0]
            raise _engine_error(bad[0], bad[1], engine)
        parts = [json.loads(content) for _, content in answers]
        for part in parts:
            engine.fix_response(body, part)
        merged = parts[0]
        merged["choices"] = [{**p["choices"][0], "index": i} for i, p in enumerate(parts)]
        usages = [p.get("usage") or {} for p in parts]
        completion = sum(u.get("completion_tokens", 0) for u in usages)
        prompt = usages[0].get("prompt_tokens", 0)
        merged["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
        ctx.done(200, False, merged["usage"])
        status = 0
        return JSONResponse(merged)
    except _TRANSPORT as exc:
        raise _transport_error(exc, engine) from exc
    finally:
        engine.leave()
        if status:
            ctx.done(status, False)


async def _stream(engine: Engine, path: str, body: dict, ctx: _Ctx) -> Response:
    await _admit(engine, ctx)
    try:  # sent again if the engine closed the connection before the first byte
        resp = await upstream.send(engine.session, "POST", path,  # type: ignore[arg-type]
                                   data=json.dumps(body).encode(), headers=ctx.headers)
    except _TRANSPORT as exc:
        engine.leave()
        ctx.done(502, True)
        raise _transport_error(exc, engine) from exc
    except BaseException:
        engine.leave()
        ctx.done(499, True)
        raise
    if resp.status != 200:
        content = await resp.read()
        resp.release()
        engine.leave()
        ctx.done(resp.status, True)
        raise _engine_error(resp.status, content, engine)

    rewrite = engine.stream_filter(body)

    async def relay():  # noqa: ANN202
        first, tail, status, complete = True, b"", 200, False
        try:
            async for chunk in resp.content.iter_any():
                if first:
                    ctx.metrics.ttft.labels(ctx.requested, ctx.served).observe(time.perf_counter() - ctx.t0)
                    first = False
                tail = (tail + chunk)[-8192:]
                if rewrite is not None:
                    chunk = rewrite.feed(chunk)
                    if not chunk:
                        continue
                yield chunk
            complete = True
            if rewrite is not None:
                rest = rewrite.flush()
                if rest:
                    yield rest
            if b"data: [DONE]" not in tail:  # transformers serve ends without it; OpenAI (and
                yield b"data: [DONE]\n\n"  # vLLM) always end with it: the gateway checks for it
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            status = 502
            err = error_body(f"{engine.kind} engine stream broke: {exc.__class__.__name__}",
                             "upstream_error", "engine_stream_error")
            yield f"data: {json.dumps(err)}\n\n".encode()
        finally:  # a client gone mid-stream lands here too: closing the engine connection
            if complete:  # (not returning it to the pool) makes the engine abort the generation
                resp.release()
            else:
                resp.close()
                status = 499 if status == 200 else status
            engine.leave()
            ctx.done(status, True, _usage_from_tail(tail))

    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def _usage_from_tail(tail: bytes) -> dict | None:
    """The usage object of the last SSE event that carries one (engines send it at the end)."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage = json.loads(line[6:]).get("usage")
            except ValueError:
                continue
            if usage:
                return usage
    return None
