"""``tallyproxy prune``: delete request records older than a cutoff; session totals stay."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.commands.common import database_flags, migrated_database, moment
from proxy.config import Settings


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "prune",
        help="delete request records older than a cutoff (session totals are kept)",
    )
    database_flags(parser)
    parser.add_argument(
        "--older-than",
        required=True,
        type=moment,
        metavar="WHEN",
        help="an age (90d, 12h) or an ISO date/time (UTC): records created before it go",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_prune(settings, args))


async def _prune(settings: Settings, args: argparse.Namespace) -> int:
    from proxy.store.prune import prune

    async with migrated_database(settings) as engine:
        count = await prune(engine, args.older_than, dry_run=args.dry_run)
    cutoff = args.older_than.strftime("%Y-%m-%dT%H:%M:%SZ")
    verb = "would delete" if args.dry_run else "deleted"
    print(f"tallyproxy: {verb} {count} records created before {cutoff}; session totals are kept")
    return 0
