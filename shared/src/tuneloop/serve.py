"""Entry point helper: ``python -m tuneloop_<service> [--host H] [--port P]``.

Settings come from the environment (pydantic-settings) when the process starts, never at
import; ``--host/--port`` override them. One uvicorn worker per process: scale with replicas.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import uvicorn

from .settings import ServiceSettings


def main(create_app: Callable[[Any], Any], settings_cls: type[ServiceSettings],
         argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"tuneloop-{settings_cls().service_name}")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings_cls(**overrides)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=settings.shutdown_timeout_s,
                timeout_keep_alive=settings.keepalive_timeout_s)
