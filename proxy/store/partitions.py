"""Postgres partitions of ``requests``: one per UTC day, a default one, kept ahead of time.

Migration 0009 makes ``requests`` a table partitioned by range of ``created_at`` on Postgres
(SQLite keeps a plain table). A day's partition is ``requests_pYYYYMMDD``, covering
[00:00, 24:00) UTC; ``requests_default`` takes a row whose day has no partition, so an insert
never fails for lack of one. ``PartitionKeeper`` creates the partitions of the next days
ahead of time, off the request path; ``proxy.store.prune`` drops whole old ones.

A partition is made as a plain table and then attached: ``ATTACH PARTITION`` takes only a
SHARE UPDATE EXCLUSIVE lock on ``requests`` (inserts and reads go on), where ``CREATE TABLE
... PARTITION OF`` would take an ACCESS EXCLUSIVE one. Rows of that day already in the default
partition (an import, a clock ahead, a keeper that did not run) would make the attach fail:
they are moved into the new table first, in the same transaction, with the default partition
locked so that no new one arrives meanwhile. Replicas doing this at once take turns on an
advisory lock; a replica that finds it taken leaves the work to the holder.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.store.compaction import compact_finished_days

log = logging.getLogger(__name__)

DEFAULT_PARTITION = "requests_default"
AHEAD_DAYS = 7
"""Days after today whose partitions exist ahead of time."""
KEEP_INTERVAL = 3600.0
"""Seconds between the keeper's rounds: a week ahead leaves days to spare."""
LOCK_TIMEOUT = "2s"
"""How long partition DDL waits for a lock before giving up until the next round: a long
read in its way must not make every insert queue behind it."""
LOCK_NOT_AVAILABLE = "55P03"
"""SQLSTATE of a lock not granted within ``lock_timeout``."""
PARTITION_LOCK_KEY = 0x74616C6C79706172  # b"tallypar": shared by replicas, keeper and prune

ID_TIME_SLACK = timedelta(hours=1)
"""Around an id's time, where its record's ``created_at`` is looked for first."""
ID_EPOCH_MS = 946_684_800_000  # 2000-01-01: an earlier "time" is not a minted id's
ID_END_MS = 253_402_300_800_000  # 10000-01-01, beyond what datetime holds

_NAME = re.compile(r"requests_p(\d{8})")


def partition_name(day: date) -> str:
    """``requests_pYYYYMMDD``: the partition of one UTC day."""
    return f"requests_p{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day of a partition named by ``partition_name``; None for any other name."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def is_partition(name: str) -> bool:
    """Whether ``name`` is a partition of ``requests`` (not a table of its own in the schema)."""
    return name == DEFAULT_PARTITION or partition_day(name) is not None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day, as aware datetimes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def days(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def id_time_window(record_id: str) -> tuple[datetime, datetime] | None:
    """Where the ``created_at`` of a record minted by ``new_record_id`` lies: its id begins
    with the milliseconds of its creation, taken a moment before its ``created_at``. None for
    an id of another shape (records put in by SQL may have any id): search everywhere then.

    A hint for partition pruning only: a record not found in the window may still be stored.
    """
    try:
        millis = int(record_id[:12], 16) if len(record_id) == 32 else -1
    except ValueError:
        return None
    if not ID_EPOCH_MS <= millis < ID_END_MS:
        return None
    minted = datetime.fromtimestamp(millis / 1000, tz=UTC)
    return minted - ID_TIME_SLACK, minted + ID_TIME_SLACK


async def is_partitioned(connection: AsyncConnection) -> bool:
    """True when ``requests`` is a partitioned table (Postgres after migration 0009)."""
    if connection.dialect.name != "postgresql":
        return False
    kind = await connection.scalar(
        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass('requests')")
    )
    return bool(kind == "p")


async def partitions(connection: AsyncConnection) -> dict[str, date | None]:
    """The partitions of ``requests`` by name, with their day (None: default or foreign)."""
    rows = await connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('requests')"
        )
    )
    return {name: partition_day(name) for name in rows.scalars()}


async def ensure_partitions(engine: AsyncEngine, first: date, last: date) -> list[str]:
    """Create the day partitions from ``first`` to ``last`` that do not exist; return their
    names. Does nothing (returns []) unless ``requests`` is partitioned, and leaves the work
    to another replica that holds the partition lock."""
    created: list[str] = []
    for day in days(first, last):
        async with engine.begin() as connection:
            if not await is_partitioned(connection):
                return created
            await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            locked = await connection.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY}
            )
            if not locked:
                log.debug("partitions: another process is creating them")
                return created
            if await _create_partition(connection, day):
                created.append(partition_name(day))
    return created


async def _create_partition(connection: AsyncConnection, day: date) -> bool:
    name = partition_name(day)
    if await connection.scalar(text("SELECT to_regclass(:name)"), {"name": name}) is not None:
        return False
    start, end = day_bounds(day)
    bounds = {"start": start, "end": end}
    await connection.execute(
        text(
            f"CREATE TABLE {name} (LIKE requests INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING STORAGE INCLUDING GENERATED INCLUDING IDENTITY)"
        )
    )
    moved = await _move_from_default(connection, name, bounds)
    if moved:
        log.warning(
            "partitions: moved %d records of %s from %s into %s",
            moved,
            day.isoformat(),
            DEFAULT_PARTITION,
            name,
        )
    # Bounds as literals: DDL takes no parameters. ISO text of aware UTC datetimes.
    await connection.execute(
        text(
            f"ALTER TABLE requests ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    log.info("partitions: created %s", name)
    return True


async def _move_from_default(
    connection: AsyncConnection, name: str, bounds: dict[str, datetime]
) -> int:
    """Move the rows of [start, end) out of the default partition into table ``name``."""
    if await connection.scalar(text(f"SELECT to_regclass('{DEFAULT_PARTITION}')")) is None:
        return 0
    # The attach locks the default partition this way anyway; taking it first keeps a row of
    # the day from arriving there between the move and the attach.
    await connection.execute(text(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE"))
    columns = ", ".join(
        f'"{column}"'
        for column in (
            await connection.execute(
                text(
                    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('requests') "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
                )
            )
        ).scalars()
    )
    result = await connection.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
            "WHERE created_at >= :start AND created_at < :end "
            f"RETURNING {columns}) "
            f"INSERT INTO {name} ({columns}) SELECT {columns} FROM moved"
        ),
        bounds,
    )
    return int(result.rowcount)


class PartitionKeeper:
    """Keeps the partitions of today and the next ``ahead_days`` days in existence, and
    compacts the rollups of the days that are over (``proxy.store.compaction``).

    One round at start and then every ``interval`` seconds, in a background task; a round
    that fails (database down, a lock not granted in time) is logged and retried at the next.
    ``ready`` says whether the schema is migrated; rounds wait for it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ready: Callable[[], bool] = lambda: True,
        ahead_days: int = AHEAD_DAYS,
        interval: float = KEEP_INTERVAL,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self._engine = engine
        self._ready = ready
        self._ahead_days = ahead_days
        self._interval = interval
        self._today = today
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task; nothing to do on SQLite."""
        if self._engine.dialect.name == "postgresql" and self._task is None:
            self._task = asyncio.create_task(self._run(), name="tallyproxy-partitions")

    async def stop(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def keep(self) -> list[str]:
        """One round: create the missing partitions of today and the days ahead."""
        today = self._today()
        return await ensure_partitions(
            self._engine, today, today + timedelta(days=self._ahead_days)
        )

    async def _run(self) -> None:
        while True:
            if self._ready():
                try:
                    await self.keep()
                except Exception as exc:
                    # The task's boundary: a round that fails must not end the rounds after it.
                    log.warning("partitions: could not create the next days' (%s)", exc)
                try:
                    await compact_finished_days(self._engine, datetime.now(UTC))
                except Exception as exc:
                    log.warning("rollups: could not compact the days that are over (%s)", exc)
                await asyncio.sleep(self._interval)
            else:
                await asyncio.sleep(min(self._interval, 1.0))


async def detached_days(connection: AsyncConnection) -> dict[str, date]:
    """Day tables left detached (a prune stopped between detaching and dropping one)."""
    rows = await connection.execute(
        text(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND NOT c.relispartition "
            "AND c.relnamespace = current_schema()::regnamespace AND c.relname LIKE 'requests_p%'"
        )
    )
    found = {name: partition_day(name) for name in rows.scalars()}
    return {name: day for name, day in found.items() if day is not None}


async def detach(engine: AsyncEngine, name: str) -> bool:
    """Detach partition ``name`` from ``requests``; False when a lock was not granted in time
    (a long query in the way): the caller may try again later."""
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY}
            )
            await connection.execute(text(f"ALTER TABLE requests DETACH PARTITION {name}"))
    except DBAPIError as exc:
        if str(getattr(exc.orig, "sqlstate", "")) != LOCK_NOT_AVAILABLE:
            raise
        return False
    return True


async def drop_detached(engine: AsyncEngine, name: str) -> int:
    """Drop a detached day table; return how many rows it held."""
    async with engine.begin() as connection:
        rows = int(await connection.scalar(text(f"SELECT count(*) FROM {name}")) or 0)
        await connection.execute(text(f"DROP TABLE {name}"))
    return rows
