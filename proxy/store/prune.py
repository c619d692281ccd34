"""Deleting old request records to keep the ``requests`` table bounded.

On Postgres, where ``requests`` is partitioned by day (``proxy.store.partitions``), a day
partition wholly older than the cutoff is detached and dropped: a moment's lock instead of
deleting millions of rows one by one and vacuuming them after. What is left older than the
cutoff (the day the cutoff falls in, the default partition, SQLite) is deleted in batches,
each its own short transaction, so the writer (and other replicas) keep inserting while a
prune runs and no lock is held for long.

Session rows and rollups are left as they are: they are running totals, the summary of
every request, and stay correct as such after the detail rows are gone.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.partitions import (
    day_bounds,
    detach,
    detached_days,
    drop_detached,
    is_partitioned,
    partitions,
)
from proxy.store.tables import requests

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
DETACH_ATTEMPTS = 5
"""Tries to detach a partition when long queries keep its lock from being granted; after
that its rows are deleted in batches like the rest."""


async def count_older(engine: AsyncEngine, cutoff: datetime) -> int:
    """How many records were created before ``cutoff``."""
    query = select(func.count()).select_from(requests).where(requests.c.created_at < cutoff)
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


async def prune(
    engine: AsyncEngine,
    cutoff: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> int:
    """Delete the records created before ``cutoff``; return how many (would) go."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if dry_run:
        return await count_older(engine, cutoff)
    dropped = await drop_old_partitions(engine, cutoff)
    return dropped + await _delete_in_batches(engine, cutoff, batch_size)


async def drop_old_partitions(engine: AsyncEngine, cutoff: datetime) -> int:
    """Detach and drop the day partitions that end at or before ``cutoff``; return how many
    rows they held. Nothing to do unless ``requests`` is partitioned."""
    async with engine.connect() as connection:
        if not await is_partitioned(connection):
            return 0
        attached = await partitions(connection)
        left_detached = await detached_days(connection)
    old = {n: d for n, d in attached.items() if d is not None and day_bounds(d)[1] <= cutoff}
    rows = 0
    for name in sorted(old):
        if await _detach_patiently(engine, name):
            rows += await drop_detached(engine, name)
    for name, day in sorted(left_detached.items()):
        if day_bounds(day)[1] <= cutoff:  # detached by a prune that stopped before the drop
            rows += await drop_detached(engine, name)
    if old:
        log.info("prune: dropped %d partitions older than %s", len(old), cutoff.isoformat())
    return rows


async def _detach_patiently(engine: AsyncEngine, name: str) -> bool:
    for attempt in range(DETACH_ATTEMPTS):
        if await detach(engine, name):
            return True
        await asyncio.sleep(0.5 * (attempt + 1))
    log.warning("prune: %s stayed locked by other queries; deleting its rows instead", name)
    return False


async def _delete_in_batches(engine: AsyncEngine, cutoff: datetime, batch_size: int) -> int:
    oldest = (
        select(requests.c.id, requests.c.created_at)
        .where(requests.c.created_at < cutoff)
        .order_by(requests.c.created_at)
        .limit(batch_size)
    )
    # By the whole key, and with the cutoff again: Postgres then looks only in the
    # partitions before the cutoff, each by its key's index.
    statement = delete(requests).where(
        requests.c.created_at < cutoff,
        tuple_(requests.c.id, requests.c.created_at).in_(oldest),
    )
    deleted = 0
    while True:
        async with engine.begin() as connection:
            result = await connection.execute(statement)
        deleted += result.rowcount
        if result.rowcount < batch_size:
            return deleted
