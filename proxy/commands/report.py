"""``tallyproxy report``: usage totals per model, user, session or day, and day-over-day change.

The rendering functions are pure (rows in, text out) so they can be table-tested; ``run``
only reads the database through ``UsageQueries.summary``, on the read replica
(``database.read_url``) when it keeps up.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

from proxy.commands.common import database_flags, moment, read_flags, reading_database
from proxy.config import Settings
from proxy.money import format_usd

GROUPS: Final = ("model", "user", "session", "day")
FORMATS: Final = ("table", "csv", "json")
COUNTS: Final = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
MAX_GROUPS: Final = 10000
NONE_KEY: Final = "(none)"
"""How the table shows a null key: requests without a user, a session or a model."""


@dataclass(frozen=True, slots=True)
class DayChange:
    """One day's totals and their change from the day before (None: no base to compare)."""

    day: date
    requests: int
    total_tokens: int
    cost_usd: Decimal | None
    requests_change: Decimal | None
    tokens_change: Decimal | None
    cost_change: Decimal | None


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "report", help="usage totals per model, user, session or day, or day over day"
    )
    database_flags(parser)
    read_flags(parser)
    parser.add_argument(
        "--since", type=moment, help="ISO date/time (UTC) or an age: 90m, 24h, 7d (default 24h)"
    )
    parser.add_argument("--until", type=moment, help="end (exclusive), same forms as --since")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--by", choices=GROUPS, default="model", help="grouping (default model)")
    mode.add_argument(
        "--daily", action="store_true", help="the last --days days with the day-over-day change"
    )
    parser.add_argument("--days", type=_positive, default=7, help="days for --daily (default 7)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="default table")
    parser.add_argument("--user", help="only requests of this user")
    parser.add_argument("--model", help="only requests of this model")
    parser.add_argument("--property", help="only requests with this property value: name:value")
    parser.set_defaults(run=run)


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3660:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 1 to 3660")
    return int(text)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.daily and (args.since or args.until):
        print(
            "tallyproxy: --daily covers the last --days days; drop --since/--until", file=sys.stderr
        )
        return 2
    name, colon, value = (args.property or "").partition(":")
    if args.property is not None and (not colon or not name):
        print(f"tallyproxy: --property {args.property!r}: use name:value", file=sys.stderr)
        return 2
    from proxy.store.queries import InvalidQuery, UsageFilters

    today = datetime.now(UTC).date()
    since = args.since or datetime.now(UTC) - timedelta(hours=24)
    if args.daily:
        since = datetime.combine(today - timedelta(days=args.days), time(), UTC)
    filters = UsageFilters(
        user_id=args.user,
        model=args.model,
        since=since,
        until=args.until,
        property_name=name.lower() if args.property else None,
        property_value=value if args.property else None,
    )
    try:
        rows = asyncio.run(_summary(settings, "day" if args.daily else args.by, filters))
    except InvalidQuery as exc:
        print(f"tallyproxy: {exc.message}", file=sys.stderr)
        return 2
    if args.daily:
        days = [today - timedelta(days=n) for n in range(args.days - 1, -1, -1)]
        print(render_daily(day_over_day(rows, days), args.format))
    else:
        print(render_summary(args.by, rows, args.format))
    return 0


async def _summary(settings: Settings, group_by: str, filters: Any) -> list[dict[str, Any]]:
    async with reading_database(settings) as reads:
        read = await reads.run(lambda q: q.summary(group_by, filters, limit=MAX_GROUPS))
        return read.value


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sums of the counts; the cost is the sum of the known costs, None when none is known."""
    result: dict[str, Any] = {name: sum(row[name] or 0 for row in rows) for name in COUNTS}
    costs = [row["cost_usd"] for row in rows if row["cost_usd"] is not None]
    result["cost_usd"] = sum(costs, Decimal(0)) if costs else None
    result["unpriced_requests"] = sum(row.get("unpriced_requests") or 0 for row in rows)
    return result


def render_summary(by: str, rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The summary rows as an aligned table with a totals row, as CSV, or as JSON."""
    header = [by, *COUNTS, "cost_usd", "unpriced_requests"]
    if fmt == "json":
        data = [{"key": row["key"], **_plain_values(row, header[1:])} for row in rows]
        return json.dumps(
            {"by": by, "data": data, "totals": _plain_values(totals(rows), header[1:])}
        )
    if fmt == "csv":
        return _csv(
            header, [[row["key"], *_plain_values(row, header[1:]).values()] for row in rows]
        )
    labels = [by, "requests", "prompt", "completion", "total tokens", "cost USD", "unpriced"]
    body = [[_key(row["key"]), *_cells(row, header[1:])] for row in rows]
    return render_table(labels, body, ["total", *_cells(totals(rows), header[1:])])


def day_over_day(rows: Sequence[Mapping[str, Any]], days: Sequence[date]) -> list[DayChange]:
    """Per day of ``days`` (consecutive, oldest first) its totals and the change from the day
    before; ``rows`` are ``summary("day")`` rows and should include the day before the first."""
    by_day = {row["key"]: row for row in rows}
    empty = {"requests": 0, "total_tokens": 0, "cost_usd": None}
    previous = by_day.get((days[0] - timedelta(days=1)).isoformat(), empty) if days else empty
    changes = []
    for day in days:
        row = by_day.get(day.isoformat(), empty)
        changes.append(
            DayChange(
                day=day,
                requests=row["requests"],
                total_tokens=row["total_tokens"] or 0,
                cost_usd=row["cost_usd"],
                requests_change=percent_change(row["requests"], previous["requests"]),
                tokens_change=percent_change(row["total_tokens"], previous["total_tokens"]),
                cost_change=percent_change(row["cost_usd"], previous["cost_usd"]),
            )
        )
        previous = row
    return changes


def percent_change(current: Decimal | int | None, previous: Decimal | int | None) -> Decimal | None:
    """The change in percent, rounded to 0.1; None when there is no base (unknown or zero)."""
    if current is None or previous is None or previous == 0:
        return None
    change = (Decimal(current) - Decimal(previous)) * 100 / Decimal(previous)
    return change.quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)


def format_percent(change: Decimal | None) -> str:
    """``+12.5%``, ``-3.0%``, ``0.0%``; ``n/a`` without a base."""
    if change is None:
        return "n/a"
    return f"{'+' if change > 0 else ''}{change}%"


DAILY_FIELDS: Final = ("day", "requests", "requests_change_pct", "total_tokens",
                       "tokens_change_pct", "cost_usd", "cost_change_pct")  # fmt: skip


def render_daily(changes: Sequence[DayChange], fmt: str) -> str:
    """The day-over-day report as an aligned table with a totals row, as CSV or as JSON."""
    records = [_day_values(change) for change in changes]
    if fmt == "json":
        data = [dict(zip(DAILY_FIELDS, values, strict=True)) for values in records]
        return json.dumps({"days": data})
    if fmt == "csv":
        return _csv(DAILY_FIELDS, records)
    labels = ["day", "requests", "change", "total tokens", "change", "cost USD", "change"]
    body = [_day_cells(change) for change in changes]
    costs = [c.cost_usd for c in changes if c.cost_usd is not None]
    total_cost = sum(costs, Decimal(0)) if costs else None
    requests = sum(c.requests for c in changes)
    tokens = sum(c.total_tokens for c in changes)
    total_row = ["total", f"{requests:,}", "", f"{tokens:,}", "", _usd(total_cost), ""]
    return render_table(labels, body, total_row)


def _day_values(c: DayChange) -> list[Any]:
    values = (c.day.isoformat(), c.requests, c.requests_change, c.total_tokens, c.tokens_change,
              c.cost_usd, c.cost_change)  # fmt: skip
    return [_plain(value) for value in values]


def _day_cells(c: DayChange) -> list[str]:
    return [c.day.isoformat(), f"{c.requests:,}", format_percent(c.requests_change),
            f"{c.total_tokens:,}", format_percent(c.tokens_change), _usd(c.cost_usd),
            format_percent(c.cost_change)]  # fmt: skip


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], total: Sequence[str] | None = None
) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned
    (numbers); a rule separates the header and the totals row."""
    lines = [list(header), *map(list, rows), *([list(total)] if total else [])]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [line(header), rule, *(line(row) for row in rows)]
    if total:
        out += [rule, line(total)]
    return "\n".join(out)


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue().rstrip("\n")


def _plain(value: Any) -> Any:
    """JSON/CSV value: money and percentages as exact decimal strings."""
    if isinstance(value, Decimal):
        return format_usd(value)
    return value


def _plain_values(row: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Counts (null sums as 0) and the cost (null stays null: unknown is not zero)."""
    return {name: _plain(row.get(name) if name == "cost_usd" else row.get(name) or 0)
            for name in names}  # fmt: skip


def _cells(row: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    return [_usd(row.get(name)) if name == "cost_usd" else f"{row.get(name) or 0:,}"
            for name in names]  # fmt: skip


def _usd(value: Decimal | None) -> str:
    return "unknown" if value is None else format_usd(value)


def _key(key: Any) -> str:
    return NONE_KEY if key is None else str(key)
