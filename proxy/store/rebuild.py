"""Recomputing rollups from raw rows, one whole UTC day per transaction.

The writer adds its records to the rollups as it stores them; rows that did not come
through it (stored before the rollups existed, or put into ``requests`` by SQL) are summed
here. Each day is replaced in one transaction that first shuts writers out of ``rollups``:
on Postgres ``SHARE ROW EXCLUSIVE`` waits for the writer transactions in flight and holds
new ones until the day is done, on SQLite ``BEGIN IMMEDIATE`` takes the database's one
write lock before anything is read. So a record stored while a day is rebuilt is either
committed before the day's rows are read (and summed here, after its own addition was
deleted) or added by its writer to the recomputed cells afterwards: it counts once.

The day's rows are summed in SQL into *finest cells* (hour and every dimension, properties
as stored), a page per hour, and ``rollup_finest`` derives every cube from those: the same
function the writer's ``rollup_rows`` uses, so the cells are those it would have made.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from sqlalchemy import Text, case, cast, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.store.cubes import (
    MEASURES,
    PLAIN_DIMENSIONS,
    add_measures,
    bucket_start,
    property_pairs,
    rollup_finest,
)
from proxy.store.rollups import mark_complete, write_cells
from proxy.store.tables import TOKEN_FIELDS, requests, rollups
from proxy.store.types import EXACT

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class DayDone:
    """Where a rebuild is, after each day: what ``progress`` is called with."""

    day: datetime
    days_done: int
    days_total: int
    records: int
    """Records summed so far, this day included."""
    elapsed: float
    """Seconds since the rebuild started."""


@dataclass
class RebuildReport:
    """What a rebuild did."""

    first_day: datetime | None = None
    last_day: datetime | None = None
    days: int = 0
    records: int = 0
    cells: int = 0
    seconds: float = 0.0
    complete: bool = False
    """True when the rebuild started at the oldest record: the rollups now hold every one."""


Progress = Callable[[DayDone], None]


async def rebuild_rollups(
    engine: AsyncEngine, since: datetime | None = None, progress: Progress | None = None
) -> RebuildReport:
    """Recompute the rollups of every UTC day from ``since``'s (default: the oldest record's)
    to the newest record's, from the raw rows; days before are not touched."""
    started = time.monotonic()
    report = RebuildReport()
    oldest, newest = await _record_span(engine)
    if newest is None or oldest is None:
        if since is None:
            async with engine.begin() as connection:
                await mark_complete(connection)
            report.complete = True
        return report
    first = day_of(since if since is not None else oldest)
    last = day_of(newest)
    total = max(0, (last - first) // DAY + 1)
    report.first_day, report.last_day = first, last
    for n in range(total):
        day = first + n * DAY
        records, cells = await _rebuild_day(engine, day)
        report.days += 1
        report.records += records
        report.cells += cells
        if progress is not None:
            progress(DayDone(day, n + 1, total, report.records, time.monotonic() - started))
    if first <= day_of(oldest):
        async with engine.begin() as connection:
            await mark_complete(connection)
        report.complete = True
    report.seconds = time.monotonic() - started
    return report


async def _record_span(engine: AsyncEngine) -> tuple[datetime | None, datetime | None]:
    """The oldest and newest ``created_at`` stored (two ends of the index)."""
    async with engine.connect() as connection:
        oldest = await connection.scalar(select(func.min(requests.c.created_at)))
        newest = await connection.scalar(select(func.max(requests.c.created_at)))
    return oldest, newest


async def _rebuild_day(engine: AsyncEngine, day: datetime) -> tuple[int, int]:
    """Replace one day's cells (both grains) by sums of its raw rows; returns how many
    records were summed and how many cells written."""
    records = cells_written = 0
    async with _writers_shut_out(engine) as connection:
        await connection.execute(
            delete(rollups).where(rollups.c.bucket_start >= day, rollups.c.bucket_start < day + DAY)
        )
        day_cells: dict[tuple[Any, ...], dict[str, Any]] = {}
        for hour in range(24):
            finest = await _finest_cells(connection, day + hour * HOUR)
            records += sum(measures[0] for measures in finest.values())
            cells = rollup_finest(finest)
            hourly = [cell for cell in cells if cell["grain"] == "hour"]
            await write_cells(connection, hourly, replace=True)
            cells_written += len(hourly)
            _merge(day_cells, (cell for cell in cells if cell["grain"] == "day"))
        daily = sorted(day_cells.values(), key=_cell_key)
        await write_cells(connection, daily, replace=True)
        cells_written += len(daily)
    return records, cells_written


@asynccontextmanager
async def _writers_shut_out(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction in which no writer changes ``rollups`` until it ends (see the module)."""
    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("LOCK TABLE rollups IN SHARE ROW EXCLUSIVE MODE"))
        else:
            # pysqlite would begin a deferred transaction at the first write; an explicit
            # BEGIN IMMEDIATE takes the write lock before the day's rows are read.
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            await connection.rollback()
            raise
        await connection.commit()


def _measure_columns() -> list[Any]:
    """The SQL sums of ``MEASURES``, in order: what ``record_measures`` adds per row."""
    c = requests.c
    sums: dict[str, Any] = {
        "requests": func.count(),
        **{name: func.coalesce(func.sum(c[name]), 0) for name in TOKEN_FIELDS},
        "unpriced_requests": func.sum(case((c.cost_usd.is_(None), 1), else_=0)),
        "error_requests": func.sum(
            case(((c.status_code >= 400) | c.error.is_not(None), 1), else_=0)
        ),
        "latency_requests": func.count(c.latency_ms),
        "cost_usd": func.sum(c.cost_usd),  # keeps the Money type: exact on both databases
        "latency_ms_sum": func.sum(c.latency_ms),
    }
    return [sums[name].label(name) for name in MEASURES]


async def _finest_cells(
    connection: AsyncConnection, hour: datetime
) -> dict[tuple[Any, ...], list[Any]]:
    """The hour's raw rows summed by every dimension and their properties as stored."""
    c = requests.c
    stored = cast(c.properties, Text)  # the JSON as written; parsed here as SQLAlchemy would
    dimensions = [c[name] for name in PLAIN_DIMENSIONS]
    query = (
        select(*dimensions, stored.label("properties"), *_measure_columns())
        .where(c.created_at >= hour, c.created_at < hour + HOUR)
        .group_by(*dimensions, stored)
    )
    finest: dict[tuple[Any, ...], list[Any]] = {}
    parsed: dict[str, tuple[tuple[str, str], ...]] = {}
    result = await connection.stream(query)
    with localcontext(EXACT):
        async for page in result.partitions(5000):
            for row in page:
                pairs = parsed.get(row.properties)
                if pairs is None:
                    pairs = parsed[row.properties] = property_pairs(json.loads(row.properties))
                key = (hour, *row[: len(PLAIN_DIMENSIONS)], pairs)
                add_measures(finest, key, _measures(row[len(PLAIN_DIMENSIONS) + 1 :]))
    return finest


def _measures(sums: Any) -> list[Any]:
    """A group's sums as ``record_measures`` would have added them: no known cost is 0."""
    values = list(sums)
    cost = len(MEASURES) - 2
    values[cost] = Decimal(0) if values[cost] is None else values[cost]
    values[-1] = 0.0 if values[-1] is None else float(values[-1])
    return values


def _cell_key(cell: dict[str, Any]) -> tuple[Any, ...]:
    return (cell["cube"], cell["grain"], cell["bucket_start"], cell["cell"])


def _merge(into: dict[tuple[Any, ...], dict[str, Any]], cells: Any) -> None:
    """Add day cells computed for one hour to those of the day's earlier hours."""
    with localcontext(EXACT):
        for cell in cells:
            known = into.get(_cell_key(cell))
            if known is None:
                into[_cell_key(cell)] = cell
            else:
                for name in MEASURES:
                    known[name] += cell[name]


def day_of(moment: datetime) -> datetime:
    """The start of the UTC day holding ``moment`` (naive: UTC): where a rebuild from it
    begins."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return bucket_start(utc, "day")
