"""``tallyproxy reprice``: recompute stored costs with the current prices."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from proxy.commands.common import database_flags, migrated_database, moment
from proxy.config import Settings
from proxy.money import format_usd
from proxy.store.reprice import PriceFunction, RepriceReport

if TYPE_CHECKING:
    from proxy.pricing import Cost
    from proxy.usage import Usage


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "reprice", help="recompute stored costs with the current prices and say what moved"
    )
    database_flags(parser)
    parser.add_argument(
        "--since", required=True, type=moment, help="ISO date/time (UTC) or an age: 90m, 24h, 7d"
    )
    parser.add_argument("--until", type=moment, help="end (exclusive), same forms as --since")
    parser.add_argument("--model", help="only requests that named this model")
    parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_reprice(settings, args))


async def _reprice(settings: Settings, args: argparse.Namespace) -> int:
    from proxy.store.reprice import reprice

    async with migrated_database(settings) as engine:
        report = await reprice(
            engine,
            record_prices(settings),
            since=args.since,
            until=args.until,
            model=args.model,
            dry_run=args.dry_run,
        )
    print(format_reprice_report(report, dry_run=args.dry_run))
    return 0


def record_prices(settings: Settings) -> PriceFunction:
    """Price stored records as the live proxy priced them: with their upstream's price list."""
    from proxy.price_hint import provider_for_record
    from proxy.pricing import PriceBook

    book = PriceBook(settings.prices)

    def price(model: str | None, upstream: str, usage: Usage, at: datetime) -> Cost | None:
        provider = provider_for_record(settings.routes, upstream, model)
        return book.cost(model, usage, provider=provider, at=at)

    return price


def format_reprice_report(report: RepriceReport, *, dry_run: bool) -> str:
    """A table of what repricing moved, per model, with the totals before and after."""
    rows = [("model", "records", "changed", "before USD", "after USD", "difference", "unpriced")]
    for model, change in sorted(report.models.items()):
        rows.append(
            (
                model,
                str(change.records),
                str(change.changed),
                format_usd(change.before),
                format_usd(change.after),
                format_usd(change.after - change.before),
                f"{change.unpriced_before} -> {change.unpriced_after}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    verb = "would change" if dry_run else "changed"
    lines.append(f"{report.examined} records examined, {verb} {report.changed}")
    return "\n".join(line.rstrip() for line in lines)
