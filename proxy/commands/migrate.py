"""``tallyproxy migrate``: apply pending migrations and exit."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.commands.common import database_flags, migrated_database
from proxy.config import Settings


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "migrate", help="apply pending database migrations and exit"
    )
    database_flags(parser)
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    async def upgrade() -> str | None:
        from proxy.store.rebuild import incomplete_notice

        async with migrated_database(settings) as engine:
            return await incomplete_notice(engine)

    notice = asyncio.run(upgrade())
    print(f"tallyproxy: database at {settings.database.url.split('@')[-1]} is up to date")
    if notice is not None:
        print(f"tallyproxy: {notice}")
    return 0
