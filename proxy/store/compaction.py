"""Daily rollup cells rewritten in key order once their day is over (Postgres).

The writer adds to a day's cells all day long, as records come: the cell of a user, a
session or a property value first seen at noon lands wherever the table had room at noon,
among that hour's other cells. A month's summary of one property value by user then reads
30,000 cells from nearly as many pages. Once a day is over its daily cells change little
(late records only: a replayed spool, a reprice), so they are rewritten together, in key
order: the same month is then some 1,200 pages, read in milliseconds instead of a hundred.
Hourly cells are written within their hour, close together already, and are left as they are.

A day is rewritten with writers shut out of ``rollups`` (as a rebuild does): about half a
second for 30,000 daily cells, while the writer's batches wait in its queue. A lock not
granted in time leaves the day to the next round. A round that compacted days ends with a
``VACUUM``: until then the indexes still lead reads to the cells' old, scattered versions.
SQLite is left as it is: its reads are not planned around page counts, and rewriting cells
there would take the database's one write lock for nothing measured.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.store.cubes import CUBES, bucket_start
from proxy.store.rollups import writers_shut_out
from proxy.store.tables import rollup_state, rollups

log = logging.getLogger(__name__)

DAY: Final = timedelta(days=1)
GRACE: Final = timedelta(hours=1)
"""How long after its end a day is compacted: batches of its last minutes still in flight."""
LOCK_TIMEOUT: Final = "2s"
_LOCK_NOT_AVAILABLE: Final = "55P03"

_DAILY_CUBES: Final = tuple(cube.name for cube in CUBES if "day" in cube.grains)
_MOVE: Final = text(
    "WITH moved AS (DELETE FROM rollups WHERE cube = :cube AND grain = 'day'"
    " AND bucket_start = :day RETURNING *)"
    " INSERT INTO rollups SELECT * FROM moved"
    " ORDER BY property_name, property_value, model, user_id, session_id, cell"
)


async def compact_day(connection: AsyncConnection, day: datetime) -> int:
    """Rewrite the daily cells of ``day`` in key order, in the caller's transaction, which
    must keep writers out (``writers_shut_out``); returns how many cells were rewritten."""
    moved = 0
    for cube in _DAILY_CUBES:
        result = await connection.execute(_MOVE, {"cube": cube, "day": day})
        moved += result.rowcount
    return moved


async def note_compacted(connection: AsyncConnection, day: datetime, now: datetime) -> None:
    """A rebuild compacted ``day``: move ``compacted_until`` past it when every earlier day
    is compacted too and ``day`` is over, so the next round does not rewrite it again. A day
    still written to is left to the round after its end."""
    if day + DAY > bucket_start(now - GRACE, "day"):
        return
    if await _first_uncompacted_day(connection) == day:
        await connection.execute(update(rollup_state).values(compacted_until=day + DAY))


async def compact_finished_days(engine: AsyncEngine, now: datetime) -> int:
    """Compact every day not compacted yet that ended at least ``GRACE`` before ``now``;
    returns how many days were. Nothing to do on SQLite."""
    if engine.dialect.name != "postgresql":
        return 0
    ready_until = bucket_start(now - GRACE, "day")  # the days before it are over
    async with engine.connect() as connection:
        first = await _first_uncompacted_day(connection)
    if first is None:
        return 0
    days = 0
    day = first
    while day < ready_until:
        if not await _compact_one(engine, day):
            break
        days += 1
        day += DAY
    if days:
        await vacuum_rollups(engine)
    return days


async def vacuum_rollups(engine: AsyncEngine) -> None:
    """Postgres: ``VACUUM (ANALYZE) rollups``, so that reads no longer visit the dead versions
    of rewritten cells through the indexes (a bitmap scan never learns they are dead);
    SQLite: ``ANALYZE rollups``. Outside any transaction, as VACUUM must be."""
    async with engine.connect() as connection:
        if connection.dialect.name != "postgresql":
            await connection.exec_driver_sql("ANALYZE rollups")
            await connection.commit()
            return
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql("VACUUM (ANALYZE) rollups")


async def _first_uncompacted_day(connection: AsyncConnection) -> datetime | None:
    """``compacted_until``, or before any compaction the day of the oldest daily cell."""
    until = await connection.scalar(select(rollup_state.c.compacted_until))
    if until is not None:
        return until  # type: ignore[no-any-return]
    oldest = await connection.scalar(
        select(func.min(rollups.c.bucket_start)).where(
            rollups.c.cube == "total", rollups.c.grain == "day"
        )
    )
    return None if oldest is None else bucket_start(oldest, "day")


async def _compact_one(engine: AsyncEngine, day: datetime) -> bool:
    """Compact ``day`` and move ``compacted_until`` past it; False when the lock was not
    granted in time."""
    try:
        async with writers_shut_out(engine, LOCK_TIMEOUT) as connection:
            until = await connection.scalar(select(rollup_state.c.compacted_until))
            if until is not None and until > day:
                return True  # another replica did it meanwhile
            moved = await compact_day(connection, day)
            await connection.execute(update(rollup_state).values(compacted_until=day + DAY))
    except DBAPIError as exc:
        if str(getattr(exc.orig, "sqlstate", "")) != _LOCK_NOT_AVAILABLE:
            raise
        log.info("rollups: compaction of %s waits for the next round (lock)", day.date())
        return False
    log.debug("rollups: compacted %d daily cells of %s", moved, day.date())
    return True
