"""``tallyproxy digest [--day YYYY-MM-DD] [--dry-run]``: send (or show) a day's digest now.

Sends to the destinations of ``digest`` in the config (webhook, SMTP) whatever the schedule
says and without claiming the day: the scheduled run of ``serve`` still sends its own.
``--dry-run`` prints the plain text (``--format html|json`` the other renderings) and sends
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

from proxy.commands.common import database_flags, migrated_database
from proxy.config import Settings


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "digest", help="send the daily digest of a day (default yesterday, UTC) now"
    )
    database_flags(parser)
    parser.add_argument("--day", type=_day, help="the UTC day, YYYY-MM-DD (default yesterday)")
    parser.add_argument("--dry-run", action="store_true", help="print it, send nothing")
    parser.add_argument(
        "--format", choices=("text", "html", "json"), default="text", help="for --dry-run"
    )
    parser.set_defaults(run=run)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day like 2026-12-02") from None


def run(settings: Settings, args: argparse.Namespace) -> int:
    if not args.dry_run and not settings.digest.enabled:
        print(
            "tallyproxy: no digest destination: set digest.webhook_url or digest.smtp in the "
            "config, or use --dry-run to print the digest",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_digest(settings, args))


async def _digest(settings: Settings, args: argparse.Namespace) -> int:
    from proxy.digest import render
    from proxy.digest.job import DigestJob
    from proxy.jobs import digest_webhook
    from proxy.store.budgets import BudgetStore
    from proxy.store.digests import DigestStore

    now = datetime.now(UTC)
    day = args.day or now.date() - timedelta(days=1)
    async with migrated_database(settings) as engine:
        webhook = None if args.dry_run else digest_webhook(settings)
        job = DigestJob(settings.digest, DigestStore(engine), BudgetStore(engine), webhook)
        try:
            digest = await job.build(day, now)
            if args.dry_run:
                if args.format == "json":
                    print(render.webhook_body(digest).decode())
                else:
                    print(render.html(digest) if args.format == "html" else render.text(digest))
                return 0
            delivered = await job.send(digest)
        finally:
            await job.close()
    print(f"tallyproxy: digest for {day} {'sent' if delivered else 'NOT delivered (see log)'}")
    return 0 if delivered else 1
