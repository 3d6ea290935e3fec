"""Bounded retries with backoff on idempotent internal calls (issue 15): a peer that is
restarting or full (503/429 with Retry-After) is asked again, a bounded number of times; a
call with a side effect (POST) is never repeated. The peer is a small real HTTP server that
answers what a draining service answers."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneloop.clients.base import ServiceClient, ServiceError


@pytest.fixture
def peer():
    script: list[int] = []
    seen: list[tuple[str, str | None]] = []

    class Peer(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append((self.command, self.headers.get("authorization")))
            status = script.pop(0) if script else 200
            body = json.dumps({"ok": True} if status == 200 else {"error": {
                "message": "draining", "type": "service_unavailable", "code": "not_ready"}})
            self.send_response(status)
            if status in (429, 503):
                self.send_header("retry-after", "0")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", script, seen
    srv.shutdown()


def test_idempotent_calls_are_retried_with_the_service_token(peer):
    url, script, seen = peer

    async def run() -> None:
        async with ServiceClient(url, api_key="svc-token", retries=3) as c:
            script[:] = [503, 429]
            assert (await c.get_json("/v1/x")) == {"ok": True}
            assert [m for m, _ in seen] == ["GET"] * 3
            assert {a for _, a in seen} == {"Bearer svc-token"}
            script[:] = [503, 503, 503, 503]  # bounded: gives up after `retries` attempts
            with pytest.raises(ServiceError) as err:
                await c.request("PUT", "/v1/x")
            assert err.value.status == 503 and len(seen) == 6
            script[:] = [503]  # a POST has a side effect: sent once
            with pytest.raises(ServiceError):
                await c.post_json("/v1/x", {})
            assert len(seen) == 7

    asyncio.run(run())
