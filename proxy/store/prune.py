"""Deleting old request records, in batches, to keep the ``requests`` table bounded.

Session rows are left as they are: they are running totals, the summary of every request a
session made, and stay correct as such after the detail rows are gone. Each batch is its own
short transaction, so the writer (and other replicas) keep inserting while a prune runs and
no lock is held for long.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.tables import requests

DEFAULT_BATCH_SIZE = 5000


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
    oldest = (
        select(requests.c.id)
        .where(requests.c.created_at < cutoff)
        .order_by(requests.c.created_at)
        .limit(batch_size)
        .scalar_subquery()
    )
    statement = delete(requests).where(requests.c.id.in_(oldest))
    deleted = 0
    while True:
        async with engine.begin() as connection:
            result = await connection.execute(statement)
        deleted += result.rowcount
        if result.rowcount < batch_size:
            return deleted
