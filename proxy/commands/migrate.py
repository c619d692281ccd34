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
    async def upgrade() -> None:
        async with migrated_database(settings):
            pass

    asyncio.run(upgrade())
    print(f"tallyproxy: database at {settings.database.url.split('@')[-1]} is up to date")
    return 0
