"""What every ``tuneloop`` command shares: the global options' state, the consoles, the client,
printing results and failing with the API's error."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

from .api import ApiError, GatewayAPI


class State:
    url: str | None = None
    api_key: str | None = None
    as_json: bool = False


state = State()
console = Console()
err_console = Console(stderr=True)


def api() -> GatewayAPI:
    return GatewayAPI(state.url, state.api_key)


def fail(exc: ApiError) -> None:
    """Print the API's error (code + message + per-line details) and exit 1."""
    err_console.print(f"[bold red]error[/]: {exc.message} [dim]({exc.code}"
                      f"{', HTTP ' + str(exc.status) if exc.status else ''})[/]")
    details = exc.details if isinstance(exc.details, dict) else {}
    for e in (details.get("errors") or [])[:20]:
        err_console.print(f"  line {e.get('line')}: {e.get('field') or ''} {e.get('message')}")
    raise typer.Exit(1)


def out(data: Any, table: Any = None) -> None:
    if state.as_json or table is None:
        console.print_json(json.dumps(data))
    else:
        console.print(table)


def _call(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ApiError as exc:
        fail(exc)


def _json(c: Any, method: str, path: str, body: Any = None) -> Any:
    return c.request(method, path, json=body).json()


def _clean(**kw: Any) -> dict:
    return {k: v for k, v in kw.items() if v is not None}
