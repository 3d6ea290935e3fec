"""The gateway in front of an inference upstream that misbehaves the way real ones do (issue 15):

- the idle keep-alive race: the upstream closes a reused connection as a request arrives on
  it (deterministic here: :class:`tuneloop.testing.faults.FaultyUpstream`); the gateway sends
  the request again on a fresh connection instead of answering 502, plain and streamed;
- a stream the upstream breaks, or ends without ``data: [DONE]`` or a finish_reason: the gateway ends it with an
  error event, so the OpenAI SDK raises instead of returning a cut answer;
- ``?rest=`` is never copied into the forwarded path;
- over capacity upstream (429 with ``Retry-After``) reaches the client as that 429.

The gateway is a real process; only the upstream is a fault injector (a real server cannot be
made to lose this race on demand).
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tuneloop.testing import ServiceProcess
from tuneloop.testing.faults import FaultyUpstream

ADMIN = "tlk-faults-admin-key-0123456789abcdef"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _gateway(tmp_path, upstream_url: str, **env: str) -> ServiceProcess:
    return ServiceProcess("tuneloop_gateway", log_path=tmp_path / "gateway.log", env={
        "TUNELOOP_DATA_DIR": str(tmp_path / "var"), "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN,
        "GATEWAY_INFERENCE_URL": upstream_url, "GATEWAY_DATASET_URL": upstream_url,
        "GATEWAY_TRAINER_URL": upstream_url, "GATEWAY_RECONCILE_INTERVAL_S": "0",
        "TUNELOOP_LOG_JSON": "false", **env})


def test_reused_connection_closed_by_upstream_is_retried_not_502(tmp_path):
    with FaultyUpstream(close_on_reuse=True) as up, _gateway(tmp_path, up.url) as gw:
        h = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=gw.url, headers=h, timeout=30) as c:
            statuses = []
            for i in range(6):
                r = c.post("/v1/chat/completions", json={**BODY, "stream": bool(i % 2)})
                statuses.append(r.status_code)
                if i % 2:
                    assert "data: [DONE]" in r.text and '"error"' not in r.text, r.text
                else:
                    assert r.json()["usage"]["completion_tokens"] == 4
            models = c.get("/v1/models")  # a read on a reused connection: retried too
        assert statuses == [200] * 6, statuses
        assert models.status_code == 200
        # the race really happened: requests were dropped unanswered on reused connections
        assert up.counters.closed_unanswered >= 5


@pytest.mark.parametrize("fault", [{"break_stream_after": 2}, {"stream_without_done": True}])
def test_broken_stream_ends_with_error_event_and_sdk_raises(tmp_path, fault):
    with FaultyUpstream(**fault) as up, _gateway(tmp_path, up.url) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ADMIN, max_retries=0, timeout=30)
        received = []
        with pytest.raises(openai.APIError) as err:
            stream = client.chat.completions.create(model="fake-model", max_tokens=6,
                                                    messages=BODY["messages"], stream=True)
            for chunk in stream:
                received.append(chunk.choices[0].delta.content)
        assert "stream broke" in str(err.value)
        if "stream_without_done" in fault:  # every chunk relayed, then the error event
            assert received == [f"tok{i} " for i in range(6)]
        # the non-streamed path and a complete stream are untouched
        if "stream_without_done" not in fault:
            resp = client.chat.completions.create(model="fake-model", max_tokens=2,
                                                  messages=BODY["messages"])
            assert resp.usage.completion_tokens == 2


def test_rest_query_parameter_is_not_copied_into_the_path(tmp_path):
    with FaultyUpstream() as up, _gateway(tmp_path, up.url) as gw:
        h = {"Authorization": f"Bearer {ADMIN}"}
        for route in ("/v1/datasets", "/v1/files", "/v1/jobs"):
            httpx.get(gw.url + route, params={"rest": "../admin/keys"}, headers=h, timeout=30)
        forwarded = [p for p in up.counters.paths if not p.startswith("GET /ready")]
        assert forwarded, up.counters.paths
        for p in forwarded:
            assert "admin" not in p.split("?")[0], forwarded
        assert {p.split("?")[0] for p in forwarded} == {
            "GET /v1/datasets", "GET /v1/files", "GET /v1/jobs"}


def test_over_capacity_upstream_is_a_429_with_retry_after(tmp_path):
    """An inference 429 (engine queue full) reaches the client as a 429 with Retry-After."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Full(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({"error": {"message": "engine at capacity", "type":
                                         "rate_limit_error", "param": None,
                                         "code": "engine_overloaded"}}).encode()
            self.send_response(429)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after", "1")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Full)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with _gateway(tmp_path, f"http://127.0.0.1:{srv.server_port}") as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=30,
                           headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "engine_overloaded"
    finally:
        srv.shutdown()
