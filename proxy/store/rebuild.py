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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from sqlalchemy import Text, case, cast, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.store.compaction import compact_day, note_compacted, vacuum_rollups
from proxy.store.cubes import (
    CUBES,
    DERIVED_GRAINS,
    MEASURES,
    PLAIN_DIMENSIONS,
    add_measures,
    bucket_start,
    property_pairs,
    rollup_finest,
)
from proxy.store.rebuild_postgres import rebuild_day_postgres
from proxy.store.rollups import mark_complete, rollups_complete, writers_shut_out
from proxy.store.tables import TOKEN_FIELDS, requests, rollups
from proxy.store.types import EXACT
from proxy.store.weeks import sum_week, week_of

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
    # Millions of cells rewritten: without fresh statistics the planner reads the cubes as
    # the near-empty table it last saw, and the replaced cells' dead versions stay in the
    # indexes for reads to visit (Postgres); both make the summaries crawl.
    await vacuum_rollups(engine)
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
    async with writers_shut_out(engine) as connection:
        await _delete_day(connection, day)
        if connection.dialect.name == "postgresql":
            records, cells_written = await rebuild_day_postgres(connection, day)
            await compact_day(connection, day)  # the COPY wrote the daily cells unsorted
            await note_compacted(connection, day, datetime.now(UTC))
        else:
            records, cells_written = await _rebuild_day_here(connection, day)
        # The day's part of its week changed with it: the week is summed from its days again.
        cells_written += await sum_week(connection, week_of(day))
    return records, cells_written


async def _rebuild_day_here(connection: AsyncConnection, day: datetime) -> tuple[int, int]:
    records = cells_written = 0
    day_cells: dict[tuple[Any, ...], dict[str, Any]] = {}
    async for finest in _finest_by_hour(connection, day):
        records += sum(measures[0] for measures in finest.values())
        cells = rollup_finest(finest)
        hourly = [cell for cell in cells if cell["grain"] == "hour"]
        await _insert_cells(connection, hourly)
        cells_written += len(hourly)
        _merge(day_cells, (cell for cell in cells if cell["grain"] == "day"))
    daily = sorted(day_cells.values(), key=_cell_key)
    await _insert_cells(connection, daily)
    return records, cells_written + len(daily)


async def _delete_day(connection: AsyncConnection, day: datetime) -> None:
    """Delete the day's cells of both grains, cube by cube: the primary key starts with cube
    and grain, so each is an index range rather than a scan of every day's cells. Weekly
    cells hold other days too: they are summed again afterwards, not deleted here."""
    c = rollups.c
    for cube in CUBES:
        for grain in (g for g in cube.grains if g not in DERIVED_GRAINS):
            await connection.execute(
                delete(rollups).where(
                    c.cube == cube.name,
                    c.grain == grain,
                    c.bucket_start >= day,
                    c.bucket_start < day + DAY,
                )
            )


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
        "tool_calls": func.coalesce(func.sum(c.tool_calls), 0),
        "cost_usd": func.sum(c.cost_usd),  # keeps the Money type: exact on both databases
        "latency_ms_sum": func.sum(c.latency_ms),
    }
    return [sums[name].label(name) for name in MEASURES]


async def _insert_cells(connection: AsyncConnection, cells: list[dict[str, Any]]) -> None:
    """Insert cells into the emptied day: plain INSERTs, the values converted once here and
    handed to the driver (SQLAlchemy's per-row parameter handling was a third of the time).
    The day is empty and writers are shut out, so a conflict would be a bug: it raises."""
    if not cells:
        return
    dialect = connection.dialect
    converters = [
        (column.name, column.type.dialect_impl(dialect).bind_processor(dialect))
        for column in rollups.columns
    ]
    names = ", ".join(name for name, _ in converters)
    marks = ", ".join("?" for _ in converters)
    rows = [
        tuple(
            cell[name] if convert is None else convert(cell[name]) for name, convert in converters
        )
        for cell in cells
    ]
    await connection.exec_driver_sql(f"INSERT INTO rollups ({names}) VALUES ({marks})", rows)


def _hour_of_row(dialect_name: str) -> Any:
    """SQL for the UTC hour of a row's ``created_at``: a naive timestamp on Postgres (whatever
    the session's time zone), text on SQLite (which stores UTC text)."""
    if dialect_name == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", requests.c.created_at))
    return func.strftime("%Y-%m-%d %H:00:00", requests.c.created_at)


def _as_hour(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC)


async def _finest_by_hour(
    connection: AsyncConnection, day: datetime
) -> AsyncIterator[dict[tuple[Any, ...], list[Any]]]:
    """The day's raw rows summed by hour, every dimension and their properties as stored:
    one query, streamed, yielding the finest cells of one hour at a time."""
    c = requests.c
    hour = _hour_of_row(connection.dialect.name).label("hour")
    stored = cast(c.properties, Text)  # the JSON as written; parsed here as SQLAlchemy would
    dimensions = [c[name] for name in PLAIN_DIMENSIONS]
    query = (
        select(hour, *dimensions, stored.label("properties"), *_measure_columns())
        .where(c.created_at >= day, c.created_at < day + DAY)
        .group_by(hour, *dimensions, stored)
        .order_by(hour)
    )
    finest: dict[tuple[Any, ...], list[Any]] = {}
    parsed: dict[str, tuple[tuple[str, str], ...]] = {}
    current: Any = None
    at = day
    first_measure = len(PLAIN_DIMENSIONS) + 2
    result = await connection.stream(query)
    async for page in result.partitions(5000):
        done: list[dict[tuple[Any, ...], list[Any]]] = []
        with localcontext(EXACT):
            for row in page:
                if row.hour != current:
                    done.append(finest)
                    finest, current, at = {}, row.hour, _as_hour(row.hour)
                pairs = parsed.get(row.properties)
                if pairs is None:
                    pairs = parsed[row.properties] = property_pairs(json.loads(row.properties))
                key = (at, *row[1 : len(PLAIN_DIMENSIONS) + 1], pairs)
                add_measures(finest, key, _measures(row[first_measure:]))
        for hour_done in done:
            if hour_done:
                yield hour_done
    if finest:
        yield finest


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


async def incomplete_notice(engine: AsyncEngine) -> str | None:
    """The line to show at start-up while the rollups lack records stored before them (a
    database migrated from before rollups, see ``rollup_state``); None once they are
    complete. Cheap: two ends of an index and, on Postgres, the planner's row estimate."""
    async with engine.connect() as connection:
        if await rollups_complete(connection):
            return None
    oldest, newest = await _record_span(engine)
    held = ""
    if oldest is not None and newest is not None:
        estimate = await _estimated_records(engine)
        about = f", about {estimate:,} records" if estimate else ""
        held = f" (records from {oldest:%Y-%m-%d} to {newest:%Y-%m-%d}{about})"
    return (
        f"rollups: the records stored before the rollups existed{held} are not in them: "
        "usage summaries read raw rows until `tallyproxy rollups rebuild` runs"
    )


async def _estimated_records(engine: AsyncEngine) -> int | None:
    """Postgres' estimate of the rows of ``requests`` and its partitions, if it has one."""
    if engine.dialect.name != "postgresql":
        return None  # SQLite keeps no row count: counting 10 M rows is no start-up task
    query = text(
        "SELECT sum(reltuples) FROM pg_class WHERE reltuples > 0 AND (oid = 'requests'::regclass"
        " OR oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'requests'::regclass))"
    )
    async with engine.connect() as connection:
        estimate = await connection.scalar(query)
    return int(estimate) if estimate else None
