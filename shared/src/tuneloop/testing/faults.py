"""A fault-injecting OpenAI-compatible upstream, to make network races deterministic in tests.

Real servers close an idle keep-alive connection after 5 s (uvicorn, vLLM); a pool that
reuses the connection at that very moment sends its request on a socket the server is
closing, and the request dies with "server disconnected" before any response byte. That race
depends on timing; :class:`FaultyUpstream` makes it happen on purpose:

- ``close_on_reuse``: a generation request (``POST .../completions``) that arrives on a
  connection which already served one is read and the connection closed without a byte of
  answer (exactly what the race looks like from the client), while the first generation on a
  connection is answered (reads such as ``/health`` are always answered);
- ``idle_close_s``: close connections idle this long (what uvicorn does, shorter);
- ``break_stream_after``: a streamed answer stops after that many chunks (the connection
  drops, as when the upstream process dies); ``stream_without_done``: the stream ends
  cleanly but without ``data: [DONE]`` (a truncation that looks like an end);
- ``latency_s``: every generation waits this long before its answer, and nothing else
  costs time (``bench/serve_load.py --fake-engine``: a stand-in for a GPU engine whose
  requests take seconds, to measure what the proxies in front of it cost under load).

It speaks just enough of the API the services proxy: ``GET /health``, ``GET /v1/models``,
``POST /v1/chat/completions`` and ``/v1/completions`` (plain and ``stream``). It runs in a
thread of the test (``with FaultyUpstream(...) as up: up.url``) or as a process
(``python -m tuneloop.testing.faults --port N --served-model-name X`` plus flags), e.g. behind
a ``vllm`` stand-in on PATH. It is a stand-in only for failures a test cannot provoke in a
real server on demand; everything else in such tests is real.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from .process import free_port


@dataclass
class Counters:
    requests: int = 0
    answered: int = 0
    closed_unanswered: int = 0
    connections: int = 0
    paths: list[str] = field(default_factory=list)


class FaultyUpstream:
    def __init__(self, *, port: int | None = None, served_name: str = "fake-model",
                 close_on_reuse: bool = False, idle_close_s: float | None = None,
                 break_stream_after: int | None = None, stream_without_done: bool = False,
                 latency_s: float = 0.0, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.served_name = served_name
        self.close_on_reuse = close_on_reuse
        self.idle_close_s = idle_close_s
        self.break_stream_after = break_stream_after
        self.stream_without_done = stream_without_done
        self.latency_s = latency_s
        self.counters = Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._conn, self.host, self.port,
                                                  backlog=4096)
        self._ready.set()
        async with self._server:
            await self._server.serve_forever()

    def __enter__(self) -> "FaultyUpstream":
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self.serve())
            except asyncio.CancelledError:
                pass
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault-injecting upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._server is not None:
            def stop() -> None:
                for task in asyncio.all_tasks(self._loop):
                    task.cancel()
            self._loop.call_soon_threadsafe(stop)
        if self._thread is not None:
            self._thread.join(10)

    # -- HTTP ----------------------------------------------------------------------------
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        used = 0
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                                  self.idle_close_s)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError,
                        asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (x.partition(":") for x in lines[1:] if x)}
                body = b""
                if int(headers.get("content-length", "0") or 0):
                    body = await reader.readexactly(int(headers["content-length"]))
                self.counters.requests += 1
                self.counters.paths.append(f"{method} {path}")
                generation = method == "POST" and path.split("?")[0].endswith("completions")
                used += generation
                if self.close_on_reuse and generation and used > 1:
                    self.counters.closed_unanswered += 1
                    return  # read, never answered: the idle-close race as the client sees it
                if not await self._answer(writer, method, path, body):
                    return
                self.counters.answered += 1
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str,
                      body: bytes) -> bool:
        """Write one answer; False when the connection must be dropped afterwards."""
        path = path.split("?", 1)[0]
        if method == "GET" and path in ("/health", "/ready"):
            return await self._json(writer, 200, {"status": "ok"})
        if method == "GET" and path == "/v1/models":
            return await self._json(writer, 200, {"object": "list", "data": [
                {"id": self.served_name, "object": "model", "created": 0, "owned_by": "test"}]})
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                return await self._json(writer, 400, {"error": {"message": "bad json"}})
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if req.get("stream"):
                return await self._stream(writer, req, chat=path.endswith("chat/completions"))
            return await self._json(writer, 200, _completion(req, self.served_name,
                                                             chat=path.endswith("chat/completions")))
        return await self._json(writer, 404, {"detail": "Not Found"})

    async def _json(self, writer: asyncio.StreamWriter, status: int, obj: dict) -> bool:
        data = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        return True

    async def _stream(self, writer: asyncio.StreamWriter, req: dict, chat: bool) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        n = int(req.get("max_tokens") or 4)
        for i in range(n):
            if self.break_stream_after is not None and i >= self.break_stream_after:
                await writer.drain()
                return False  # drop the connection mid-stream, no terminating chunk
            delta = {"content": f"tok{i} "} if chat else None
            choice = {"index": 0, "delta": delta, "finish_reason": None} if chat else \
                {"index": 0, "text": f"tok{i} ", "finish_reason": None}
            chunk = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else
                     "text_completion", "created": int(time.time()), "model": self.served_name,
                     "choices": [choice]}
            _chunk(writer, f"data: {json.dumps(chunk)}\n\n".encode())
            await writer.drain()
        if not self.stream_without_done:
            _chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _completion(req: dict, model: str, chat: bool) -> dict:
    n = int(req.get("max_tokens") or 4)
    text = " ".join(f"tok{i}" for i in range(n))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text},
               "finish_reason": "length"} if chat else
              {"index": 0, "text": text, "finish_reason": "length"})
    return {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="tuneloop-faulty-upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name", default="fake-model")
    p.add_argument("--close-on-reuse", action="store_true")
    p.add_argument("--idle-close-s", type=float, default=None)
    p.add_argument("--latency-s", type=float, default=0.0,
                   help="seconds every generation waits before its answer")
    args = p.parse_args(argv)
    up = FaultyUpstream(port=args.port, host=args.host, served_name=args.served_model_name,
                        close_on_reuse=args.close_on_reuse, idle_close_s=args.idle_close_s,
                        latency_s=args.latency_s)
    try:  # the loop of the servers it stands in for (uvicorn, vLLM), when installed
        import uvloop

        uvloop.run(up.serve())
    except ImportError:
        asyncio.run(up.serve())


if __name__ == "__main__":
    main()
