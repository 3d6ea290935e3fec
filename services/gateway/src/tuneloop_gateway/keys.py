"""Admin CLI for API keys, working on the gateway's database directly.

    python -m tuneloop_gateway.keys create --scope admin --name ops
    python -m tuneloop_gateway.keys list
    python -m tuneloop_gateway.keys revoke key-0123abcd...

Settings come from the environment like the service (``GATEWAY_*`` / ``TUNELOOP_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from tuneloop.db import Database
from tuneloop.errors import TuneloopError

from .app import MIGRATIONS, VERSION_TABLE
from .auth import KeyStore
from .settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuneloop_gateway.keys")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create a key and print it (shown once)")
    c.add_argument("--scope", action="append", choices=["inference", "admin"], default=None)
    c.add_argument("--name", default="cli")
    c.add_argument("--rate-limit-rpm", type=int, default=None)
    lst = sub.add_parser("list", help="list keys")
    lst.add_argument("--all", action="store_true", help="include revoked keys")
    r = sub.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id")
    args = p.parse_args(argv)

    settings = GatewaySettings()
    db = Database(settings.resolved_database_url())
    db.migrate(MIGRATIONS, version_table=VERSION_TABLE)
    try:
        for line in asyncio.run(_run(args, KeyStore(db))):
            print(line)
    except TuneloopError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    return 0


async def _run(args: argparse.Namespace, keys: KeyStore) -> list[str]:
    """The command's output lines (JSON objects)."""
    if args.cmd == "create":
        key, view = await keys.create(args.name, args.scope or ["inference"], args.rate_limit_rpm)
        return [json.dumps({**view, "key": key})]
    if args.cmd == "list":
        return [json.dumps(k) for k in await keys.list(include_revoked=args.all)]
    return [json.dumps(await keys.revoke(args.key_id))]

if __name__ == "__main__":
    sys.exit(main())
