"""Entry point helper: ``python -m tuneloop_<service> [--host H] [--port P]``.

Settings come from the environment (pydantic-settings) when the process starts, never at
import; ``--host/--port`` override them. One uvicorn server per process: scale with replicas,
or (a service whose settings have ``workers``: the gateway) with several worker processes
behind one port, run by :class:`tuneloop.workers.Supervisor`.
"""

from __future__ import annotations

import argparse
import math
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from .logs import configure_logging
from .settings import ServiceSettings
from .workers import Supervisor, resolve_workers


def raise_open_files_limit(want: int = 65536) -> int:
    """Raise this process's soft limit of open files toward the hard one (as vLLM does): the
    default 1,024 is less than a proxy holding 1,024 client connections and as many upstream
    ones. Returns the soft limit now in force."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        return soft
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep what we have
        return -1


def main(create_app: Callable[[Any], Any], settings_cls: type[ServiceSettings],
         argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"tuneloop-{settings_cls().service_name}")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--fd", type=int, default=None,
                        help="serve on this inherited listening socket (a supervised worker)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings_cls(**overrides)
    raise_open_files_limit()
    workers = resolve_workers(getattr(settings, "workers", 1))
    if args.fd is None and workers > 1:
        configure_logging(settings.service_name, settings.log_level, settings.log_json)
        module = create_app.__module__.split(".")[0]
        raise SystemExit(Supervisor(module, settings.host, settings.port, workers,
                                    settings.shutdown_timeout_s).run())
    app = create_app(settings)
    app.state.freeze_heap_after_start = settings.gc_freeze  # a served process: see app.py
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False,
                            timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
                            timeout_keep_alive=math.ceil(settings.keepalive_timeout_s))
    sockets = [socket.socket(fileno=args.fd)] if args.fd is not None else None
    uvicorn.Server(config).run(sockets=sockets)
