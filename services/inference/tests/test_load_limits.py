"""One request must not stall a model, and no request is dropped (issue 15), on the real
service with the real CPU engine (vLLM's CPU build, run here with one sequence at a time:
``engine_max_num_seqs=1`` is also its ``--max-num-seqs``, so a generation nobody stops blocks
every later request).

- prompt tokens + ``max_tokens`` beyond the model's context: 400 ``context_length_exceeded``
  naming the limit, from the service and through the gateway;
- a client that disconnects cancels its generation in the engine (plain and streamed): the
  next request is answered although the abandoned one asked for 90,000 tokens;
- over capacity (``engine_max_num_seqs`` running, queue full): 429 with ``Retry-After``;
- deeply nested JSON: 400, and the connection stays usable;
- the idle keep-alive race between the service and its engine (a ``vllm`` stand-in that
  drops every generation arriving on a reused connection, as the race does): no 502.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tuneloop.testing import ServiceProcess

ADMIN_KEY = "test-admin-key"
CONTEXT = 100_000
MESSAGES = [{"role": "user", "content": "My invoice is wrong, please help."}]


@pytest.fixture(scope="module")
def long_context_model(tiny_random_dir: Path, tmp_path_factory) -> Path:
    """The tiny model with a 100,000-token context: a request can ask for a generation that
    would run for hours on this CPU."""
    out = tmp_path_factory.mktemp("long-ctx") / "model"
    shutil.copytree(tiny_random_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = CONTEXT
    (out / "config.json").write_text(json.dumps(cfg))
    return out


# vLLM's own sampling parameters: 90,000 tokens, no early end token (minutes of generation)
ENDLESS = {"max_tokens": 90_000, "min_tokens": 90_000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def service(long_context_model: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    proc = ServiceProcess("tuneloop_inference", log_path=root / "service.log",
                          health_path="/ready", startup_timeout=240, env={
        "TUNELOOP_DATA_DIR": str(root), "INFERENCE_ADMIN_KEY": ADMIN_KEY,
        "INFERENCE_BASE_MODEL_PATH": str(long_context_model), "INFERENCE_ENGINE": "vllm",
        "INFERENCE_VLLM_CPU_KV_CACHE_GIB": "0.25", "INFERENCE_VLLM_ENABLE_LORA": "false",
        "INFERENCE_ENGINE_MAX_NUM_SEQS": "1", "INFERENCE_ENGINE_QUEUE_SIZE": "0",
        "INFERENCE_REPLICA_ID": "limits", "TUNELOOP_LOG_JSON": "false"}).start()
    yield proc
    proc.stop(timeout=60)


def _in_flight(url: str) -> int:
    deps = httpx.get(url + "/admin/deployments", timeout=30,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["data"]
    return sum((d.get("local") or {}).get("in_flight", 0) for d in deps)


def _wait_idle(url: str, deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while _in_flight(url) and time.monotonic() < end:
        time.sleep(0.2)
    assert _in_flight(url) == 0, "the abandoned request still holds the engine"


def _short_request_answers(url: str) -> None:
    """The engine generates one request at a time: this answers only if nothing else runs."""
    r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": "base", "messages": MESSAGES, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_context_length_is_checked_before_the_engine(service, tmp_path):
    r = httpx.post(service.url + "/v1/chat/completions", timeout=60, json={
        "model": "base", "messages": MESSAGES, "max_tokens": 1_000_000})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert str(CONTEXT) in err["message"]
    long_prompt = " ".join(f"word{i}" for i in range(60_000))  # ~ 420 KB, far over 100k tokens
    r = httpx.post(service.url + "/v1/chat/completions", timeout=120, json={
        "model": "base", "messages": [{"role": "user", "content": long_prompt}],
        "max_tokens": 16})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert err["details"]["prompt_tokens"] > CONTEXT and err["details"]["context_length"] == CONTEXT
    r = httpx.post(service.url + "/v1/completions", timeout=60, json={
        "model": "base", "prompt": "Hello", "max_tokens": CONTEXT})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # and through the gateway, unchanged
    admin = "tlk-limits-admin-key-0123456789abcdef"
    with ServiceProcess("tuneloop_gateway", log_path=tmp_path / "gw.log", env={
            "TUNELOOP_DATA_DIR": str(tmp_path / "gw"), "GATEWAY_BOOTSTRAP_ADMIN_KEY": admin,
            "GATEWAY_INFERENCE_URL": service.url, "GATEWAY_RECONCILE_INTERVAL_S": "0",
            "TUNELOOP_LOG_JSON": "false"}) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {admin}"},
                       json={"model": "base", "messages": MESSAGES, "max_tokens": 1_000_000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert str(CONTEXT) in r.json()["error"]["message"]
    _short_request_answers(service.url)  # nothing was started in the engine


def test_a_complete_stream_ends_with_done(service):
    """A stream ends with exactly one ``data: [DONE]`` (vLLM sends it; for the fallback
    engine, whose streams end without it, the service adds it), so a stream that lacks it
    downstream is known to be cut."""
    r = httpx.post(service.url + "/v1/chat/completions", timeout=120, json={
        "model": "base", "messages": MESSAGES, "max_tokens": 3, "stream": True})
    assert r.status_code == 200
    assert r.text.rstrip().endswith("data: [DONE]") and r.text.count("[DONE]") == 1, r.text


def test_disconnected_plain_client_cancels_its_generation(service):
    with pytest.raises(httpx.ReadTimeout):  # the client gives up: its connection closes
        httpx.post(service.url + "/v1/chat/completions", timeout=httpx.Timeout(60, read=3),
                   json={"model": "base", "messages": MESSAGES, **ENDLESS})
    _wait_idle(service.url)
    _short_request_answers(service.url)


def test_disconnect_through_the_gateway_cancels_too(service, tmp_path):
    """The gateway, too, lets go of a generation its client abandoned (before: it waited up
    to its 300 s read timeout, and the engine generated for nobody all that time)."""
    admin = "tlk-limits-admin-key-0123456789abcdef"
    with ServiceProcess("tuneloop_gateway", log_path=tmp_path / "gw.log", env={
            "TUNELOOP_DATA_DIR": str(tmp_path / "gw"), "GATEWAY_BOOTSTRAP_ADMIN_KEY": admin,
            "GATEWAY_INFERENCE_URL": service.url, "GATEWAY_RECONCILE_INTERVAL_S": "0",
            "TUNELOOP_LOG_JSON": "false"}) as gw:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + "/v1/chat/completions", timeout=httpx.Timeout(60, read=3),
                       headers={"Authorization": f"Bearer {admin}"},
                       json={"model": "base", "messages": MESSAGES, **ENDLESS})
        _wait_idle(service.url)
    _short_request_answers(service.url)


def test_over_capacity_is_429_and_a_dropped_stream_cancels(service):
    body = {"model": "base", "messages": MESSAGES, "stream": True, **ENDLESS}
    with httpx.Client(timeout=120) as c, c.stream("POST", service.url + "/v1/chat/completions",
                                                  json=body) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()  # one iterator: a dropped one closes the stream
        assert next(lines).startswith("data: ")
        # one slot (engine_max_num_seqs=1), no queue: the next request is refused, not dropped
        r = httpx.post(service.url + "/v1/chat/completions", timeout=60, json={
            "model": "base", "messages": MESSAGES, "max_tokens": 2})
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "engine_overloaded"
    _wait_idle(service.url)  # the stream was dropped by its client
    _short_request_answers(service.url)


def test_deeply_nested_json_is_400_and_keeps_the_connection(service):
    nested = "[" * 50_000 + "]" * 50_000
    body = ('{"model": "base", "messages": [{"role": "user", "content": ' + nested + "}]}").encode()
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        f = sock.makefile("rb")
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        status, headers, data = _read_response(f)
        assert status == 400, data
        assert json.loads(data)["error"]["code"] == "invalid_json"
        assert headers.get("connection") != "close"
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")  # same connection
        assert _read_response(f)[0] == 200


def _read_response(f) -> tuple[int, dict[str, str], bytes]:  # noqa: ANN001
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline().decode("latin-1").strip()):
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, f.read(int(headers.get("content-length", 0)))


STANDIN = '''#!{python}
"""Stand-in for `vllm serve` (no GPU here): a fault-injecting OpenAI server on the same port
and name that drops every generation arriving on a reused connection (the idle-close race)."""
import os, sys
args = sys.argv[1:]
opts = {{args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")}}
os.execv(sys.executable, [sys.executable, "-m", "tuneloop.testing.faults", "--close-on-reuse",
         "--served-model-name", opts["--served-model-name"], "--host", opts["--host"],
         "--port", opts["--port"]])
'''


def test_engine_closing_reused_connections_is_no_502(tiny_random_dir: Path, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(STANDIN.format(python=sys.executable))
    (bin_dir / "vllm").chmod(0o755)
    with ServiceProcess("tuneloop_inference", log_path=tmp_path / "service.log",
                        health_path="/ready", startup_timeout=240, env={
            "TUNELOOP_DATA_DIR": str(tmp_path / "var"), "INFERENCE_ADMIN_KEY": ADMIN_KEY,
            "INFERENCE_BASE_MODEL_PATH": str(tiny_random_dir), "INFERENCE_ENGINE": "vllm",
            "INFERENCE_GPU_IDS": '["0"]', "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "INFERENCE_REPLICA_ID": "race", "TUNELOOP_LOG_JSON": "false"}) as svc:
        statuses = []
        with httpx.Client(base_url=svc.url, timeout=60) as c:
            for i in range(6):
                r = c.post("/v1/chat/completions", json={
                    "model": "base", "messages": MESSAGES, "max_tokens": 3,
                    "stream": bool(i % 2)})
                statuses.append(r.status_code)
                if i % 2:
                    assert "data: [DONE]" in r.text and '"error"' not in r.text, r.text
                else:
                    assert r.json()["usage"]["completion_tokens"] == 3, r.text
        assert statuses == [200] * 6, statuses
