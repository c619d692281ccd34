"""The SQL that keeps ``rollups``: cells grow (or shrink) by sums, inside the caller's
transaction.

``add_to_rollups`` runs in the writer's transaction with the request rows it sums, only for
the rows actually inserted, so a replayed or duplicate record never counts twice (the same
rule as ``sessions``). ``reprice`` runs it with the difference of a record's cost, a rebuild
with ``replace=True`` to overwrite cells recomputed from raw rows.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.store.cubes import MEASURES, finest_cells, rollup_rows
from proxy.store.rollups_sql import add_finest
from proxy.store.tables import rollup_state, rollups


async def add_to_rollups(
    connection: AsyncConnection, request_rows: Iterable[Mapping[str, Any]], sign: int = 1
) -> None:
    """Add the ``requests`` rows to their cells (``sign=-1``: take them out)."""
    if connection.dialect.name == "postgresql":
        await add_finest(connection, finest_cells(request_rows, sign))
    else:
        await write_cells(connection, rollup_rows(request_rows, sign))


async def write_cells(
    connection: AsyncConnection, cells: list[dict[str, Any]], *, replace: bool = False
) -> None:
    """Upsert ``cells`` (rows of ``rollup_rows``): add to stored cells, or overwrite them."""
    if cells:
        await connection.execute(_cell_upsert(connection.dialect.name, replace), cells)


async def rollups_complete(connection: AsyncConnection) -> bool:
    """True when the rollups hold every stored record (see ``rollup_state``)."""
    complete = await connection.scalar(select(rollup_state.c.complete))
    return bool(complete)


async def mark_complete(connection: AsyncConnection, at: datetime | None = None) -> None:
    """Record that a rebuild from the first stored record has finished."""
    moment = at or datetime.now(UTC)
    await connection.execute(update(rollup_state).values(complete=True, rebuilt_at=moment))


@asynccontextmanager
async def writers_shut_out(
    engine: AsyncEngine, lock_timeout: str | None = None
) -> AsyncIterator[AsyncConnection]:
    """A transaction in which no writer changes ``rollups`` until it ends.

    On Postgres ``SHARE ROW EXCLUSIVE`` waits for the writer transactions in flight and holds
    new ones until the transaction ends (or fails after ``lock_timeout``, e.g. ``"2s"``); on
    SQLite ``BEGIN IMMEDIATE`` takes the database's one write lock before anything is read.
    """
    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            if lock_timeout is not None:
                await connection.execute(text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
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


@functools.cache
def _cell_upsert(dialect_name: str, replace: bool) -> Any:
    """The statement storing a batch of cells; built once per dialect (as ``sessions``')."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(rollups)
    new, old = statement.excluded, rollups.c
    if replace:
        updates = {name: new[name] for name in MEASURES}
    else:
        updates = {name: old[name] + new[name] for name in MEASURES}
    keys = [old.cube, old.grain, old.bucket_start, old.cell]
    return statement.on_conflict_do_update(index_elements=keys, set_=updates)
