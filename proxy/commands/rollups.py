"""``tallyproxy rollups rebuild``: recompute the rollups of whole days from the raw rows."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

from proxy.commands.common import database_flags, migrated_database, moment
from proxy.config import Settings

if TYPE_CHECKING:
    from proxy.store.rebuild import DayDone, RebuildReport


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "rollups", help="the per-hour and per-day sums that usage summaries read"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    rebuild = actions.add_parser(
        "rebuild",
        help="recompute whole UTC days of rollups from the raw records still stored",
    )
    database_flags(rebuild)
    rebuild.add_argument(
        "--since",
        type=moment,
        metavar="WHEN",
        help="an ISO date/time (UTC) or an age (90m, 24h, 7d): its whole day and every later "
        "one are rebuilt; default: from the oldest stored record",
    )
    rebuild.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_rebuild(settings, args))


async def _rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from proxy.store.rebuild import rebuild_rollups

    show = ProgressLine(sys.stderr)
    async with migrated_database(settings) as engine:
        report = await rebuild_rollups(engine, since=args.since, progress=show)
    show.finish()
    print(format_rebuild_report(report))
    return 0


class ProgressLine:
    """Days done, records summed, their rate and the time left: one line per day, or one
    line rewritten in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._rewrite = stream.isatty()
        self._shown = False

    def __call__(self, done: DayDone) -> None:
        rate = done.records / done.elapsed if done.elapsed > 0 else 0.0
        left = done.elapsed / done.days_done * (done.days_total - done.days_done)
        line = (
            f"rollups rebuild: {done.day:%Y-%m-%d} day {done.days_done}/{done.days_total}, "
            f"{done.records:,} records, {rate:,.0f} records/s, "
            f"ETA {timedelta(seconds=round(left))}"
        )
        if self._rewrite:
            self._stream.write(f"\r\x1b[K{line}")
        else:
            self._stream.write(f"{line}\n")
        self._stream.flush()
        self._shown = True

    def finish(self) -> None:
        """End a rewritten line, so what follows starts on its own."""
        if self._rewrite and self._shown:
            self._stream.write("\n")
            self._stream.flush()


def format_rebuild_report(report: RebuildReport) -> str:
    """One line: what was rebuilt, how fast, and whether the rollups now hold every record."""
    if report.first_day is None or report.last_day is None:
        return "tallyproxy: no stored records: the rollups have nothing to rebuild"
    rate = report.records / report.seconds if report.seconds > 0 else 0.0
    span = f"{report.first_day:%Y-%m-%d} to {report.last_day:%Y-%m-%d}"
    line = (
        f"tallyproxy: rebuilt the rollups of {report.days} days ({span}) from "
        f"{report.records:,} records into {report.cells:,} cells in {report.seconds:.1f} s "
        f"({rate:,.0f} records/s)"
    )
    if report.complete:
        return f"{line}; they hold every stored record"
    return line
