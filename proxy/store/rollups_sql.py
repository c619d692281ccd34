"""Postgres's way of adding a batch to the rollups: one statement that derives every cube.

The writer sends the batch's finest cells (``proxy.store.cubes.finest_cells``: by hour,
every dimension and property set) as column arrays; the statement unnests them, sums them
into each cube and grain with ``GROUP BY`` and upserts the cells, in key order. A batch of
500 varied records touches some 5,000 cells: one statement summing in the server costs a
fraction of 5,000 bound rows summed in Python and sent one by one.

Cell keys are the same MD5 as ``proxy.store.cubes.cell_id`` computes, so cells written here
and cells written from Python (reprice, rebuild, SQLite) are the same rows.
"""

from __future__ import annotations

import functools
import json
from typing import Final

from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.cubes import (
    COUNTS,
    CUBES,
    MEASURES,
    PLAIN_DIMENSIONS,
    PROPERTY,
    Cube,
    Finest,
    rollup_finest,
)
from proxy.store.tables import rollups

_DIMENSION_COLUMNS: Final = (*PLAIN_DIMENSIONS, "property_name", "property_value")
_MEASURE_TYPES: Final = {
    **dict.fromkeys(COUNTS, "bigint"),
    "cost_usd": "numeric",
    "latency_ms_sum": "float8",
}


DERIVE_IN_PYTHON_UP_TO: Final = 16
"""Finest cells up to which Python derives the cubes: a batch of alike records is one or a
few finest cells, and the sixteen-way statement's fixed cost (~1 ms) would outweigh it."""


async def add_finest(connection: AsyncConnection, finest: Finest) -> None:
    """Add the finest cells to every cube's cells, in the caller's transaction, which must
    end after this (the big statement changes the plan cache mode, see below)."""
    if not finest:
        return
    if len(finest) <= DERIVE_IN_PYTHON_UP_TO:
        cells = rollup_finest(finest)
        columns = [[cell[name] for cell in cells] for name in _CELL_COLUMNS]
        await connection.exec_driver_sql(_cells_statement(), tuple(columns))
        return
    # Planning the cube-deriving statement takes ~1.7 ms: plan it once per connection (the
    # engine asks for custom plans, see ``proxy.store.engine``). Ends with the transaction.
    await connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    columns = [[] for _ in range(2 + len(PLAIN_DIMENSIONS) + len(MEASURES))]
    for (hour, *plain, properties), measures in finest.items():
        values = (hour, *plain, json.dumps(dict(properties)) if properties else None, *measures)
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await connection.exec_driver_sql(_statement(), tuple(columns))


_CELL_COLUMNS: Final = ("cube", "grain", "bucket_start", "cell", *_DIMENSION_COLUMNS, *MEASURES)


@functools.cache
def _cells_statement() -> str:
    """The upsert of cells derived in Python, as column arrays."""
    types = {"bucket_start": "timestamptz", **_MEASURE_TYPES}
    arrays = ", ".join(
        f"${n}::{types.get(name, 'text')}[]" for n, name in enumerate(_CELL_COLUMNS, start=1)
    )
    return f"""
INSERT INTO {rollups.name} ({", ".join(_CELL_COLUMNS)}) SELECT * FROM unnest({arrays})
ON CONFLICT (cube, grain, bucket_start, cell) DO UPDATE SET {_additions()}
"""


def _additions() -> str:
    return ", ".join(f"{m} = {rollups.name}.{m} + excluded.{m}" for m in MEASURES)


@functools.cache
def _statement() -> str:
    """The upsert, written once from ``CUBES``."""
    inputs = ["hour timestamptz", *(f"{d} text" for d in PLAIN_DIMENSIONS), "props text"]
    inputs += [f"{m} {_MEASURE_TYPES[m]}" for m in MEASURES]
    arrays = ", ".join(f"${n}::{i.split()[1]}[]" for n, i in enumerate(inputs, start=1))
    names = ", ".join(i.split()[0] for i in inputs)
    branches = "\n    UNION ALL ".join(
        _branch(cube, grain) for cube in CUBES for grain in cube.grains
    )
    measures = ", ".join(MEASURES)
    updates = _additions()
    return f"""
WITH finest AS (SELECT * FROM unnest({arrays}) AS f({names})),
with_property AS (
    SELECT finest.*, p.key AS property_name, p.value AS property_value
    FROM finest CROSS JOIN LATERAL jsonb_each_text(finest.props::jsonb) AS p
),
cells AS (
    {branches}
)
INSERT INTO {rollups.name} (cube, grain, bucket_start, cell, {", ".join(_DIMENSION_COLUMNS)},
                            {measures})
SELECT * FROM cells ORDER BY cube, grain, bucket_start, cell
ON CONFLICT (cube, grain, bucket_start, cell) DO UPDATE SET {updates}
"""


def _branch(cube: Cube, grain: str) -> str:
    """One cube at one grain: the finest cells grouped by its bucket and dimensions."""
    keys = [*(["property_name", "property_value"] if cube.has_property else []),
            *(d for d in cube.dimensions if d != PROPERTY)]  # fmt: skip
    bucket = "hour" if grain == "hour" else f"date_trunc('{grain}', hour, 'UTC')"
    # The MD5 of cubes.cell_id: each value length-prefixed in bytes, "n" for null.
    parts = [f"CASE WHEN {k} IS NULL THEN 'n' ELSE 'v' || octet_length({k}) || ':' || {k} END"
             for k in keys]  # fmt: skip
    cell = f"md5({' || '.join(parts)})" if parts else "md5('')"
    dimensions = ", ".join(k if k in keys else f"NULL::text AS {k}" for k in _DIMENSION_COLUMNS)
    sums = ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
    source = "with_property" if cube.has_property else "finest"
    group = ", ".join(["bucket_start", *keys])
    return (
        f"SELECT '{cube.name}'::varchar AS cube, '{grain}'::varchar AS grain, {bucket} AS "
        f"bucket_start, {cell} AS cell, {dimensions}, {sums} FROM {source} GROUP BY {group}"
    )
