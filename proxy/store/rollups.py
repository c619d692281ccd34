"""The SQL that keeps ``rollups``: cells grow (or shrink) by sums, inside the caller's
transaction.

``add_to_rollups`` runs in the writer's transaction with the request rows it sums, only for
the rows actually inserted, so a replayed or duplicate record never counts twice (the same
rule as ``sessions``). ``reprice`` runs it with the difference of a record's cost, a rebuild
with ``replace=True`` to overwrite cells recomputed from raw rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

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
