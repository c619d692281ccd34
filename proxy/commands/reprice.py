"""``tallyproxy reprice``: recompute stored costs with the current prices."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.commands.common import database_flags, migrated_database, moment
from proxy.config import Settings
from proxy.money import format_usd
from proxy.store.reprice import RepriceReport


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "reprice", help="recompute stored costs with the current prices and say what moved"
    )
    database_flags(parser)
    parser.add_argument(
        "--since", required=True, type=moment, help="ISO date/time (UTC) or an age: 90m, 24h, 7d"
    )
    parser.add_argument("--until", type=moment, help="end (exclusive), same forms as --since")
    parser.add_argument("--model", help="only records of this model")
    parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_reprice(settings, args))


async def _reprice(settings: Settings, args: argparse.Namespace) -> int:
    from proxy.pricing import PriceBook
    from proxy.store.reprice import reprice

    book = PriceBook(settings.prices)
    async with migrated_database(settings) as engine:
        report = await reprice(
            engine,
            lambda model, usage, at: book.cost(model, usage, at=at),
            since=args.since,
            until=args.until,
            model=args.model,
            dry_run=args.dry_run,
        )
    print(format_reprice_report(report, dry_run=args.dry_run))
    return 0


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
