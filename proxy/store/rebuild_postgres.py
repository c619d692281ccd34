"""A day of rollups summed by Postgres: every cube in two ``GROUPING SETS`` queries, the cells
streamed back and written by COPY.

``rollup_finest`` in Python costs a dict update per cube and grain and record-like finest
cell; at 10 M records that is most of an hour. Here the database sums each cube and grain
directly (one pass over the day's rows for the cubes without properties, one over the rows
joined to their properties for the others), and Python only names the cells
(``cell_id``). The result is the cells ``rollup_rows`` makes, which the tests check:

- the hour is ``date_trunc`` of the UTC time, the day the day being rebuilt;
- a dimension that is not the cube's is null (``GROUPING SETS`` leaves it null);
- property values as ``property_pairs`` reads them: a JSON string as its text, any other
  value as Python's ``json.dumps`` of it, a null value as no value, a row whose properties
  are not an object as no properties. Strings are grouped by their text in SQL; the rare
  other values are renamed in Python and added to their cells by upsert afterwards, since
  two spellings (``1.0``, ``1.00``) or a string and a number (``"1"``, ``1``) share a cell.

The caller holds the day's transaction, with writers shut out of ``rollups`` and the day's
cells deleted: the COPY inserts into an empty day.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import localcontext
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.cubes import CUBES, MEASURES, PLAIN_DIMENSIONS, Cube, cell_id
from proxy.store.rollups import write_cells
from proxy.store.tables import TOKEN_FIELDS, rollups
from proxy.store.types import EXACT

COPY_BATCH = 20_000
FETCH_AHEAD = 10_000

_GROUPED: Final = ("hour", *PLAIN_DIMENSIONS)
"""The arguments of ``GROUPING()``: a set bit is a column the set does not group by."""

_COLUMNS: Final = (
    "cube", "grain", "bucket_start", "cell", *PLAIN_DIMENSIONS, "property_name",
    "property_value", *MEASURES,
)  # fmt: skip

_SUMS: Final = ", ".join(
    [
        "count(*)",
        *(f"coalesce(sum({name}), 0)" for name in TOKEN_FIELDS),
        "sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)",
        "sum(CASE WHEN status_code >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END)",
        "count(latency_ms)",
        "coalesce(sum(cost_usd), 0)",
        "coalesce(sum(latency_ms), 0)",
    ]
)
"""``MEASURES`` in order, as ``record_measures`` adds them per row."""

_DAY_ROWS: Final = (
    "(SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AS hour, * FROM requests"
    " WHERE created_at >= $1 AND created_at < $2) AS r"
)

_PROPERTIES: Final = (
    " CROSS JOIN LATERAL json_each(CASE WHEN json_typeof(r.properties::json) = 'object'"
    " THEN r.properties::json ELSE '{}'::json END) AS p"
)
_STRING: Final = "CASE WHEN json_typeof(p.value) = 'string' THEN p.value #>> '{}' END"
_OTHER: Final = "CASE WHEN json_typeof(p.value) <> 'string' THEN p.value::text END"


def _sets(with_property: bool) -> list[tuple[Cube, str, tuple[str, ...]]]:
    """Per cube and grain (of the cubes with or without property): its grouping columns."""
    found = []
    for cube in CUBES:
        if cube.has_property != with_property:
            continue
        plain = tuple(name for name in cube.dimensions if name in PLAIN_DIMENSIONS)
        for grain in cube.grains:
            found.append((cube, grain, ("hour", *plain) if grain == "hour" else plain))
    return found


def _mask(columns: tuple[str, ...]) -> int:
    bits = len(_GROUPED) - 1
    return sum(1 << (bits - i) for i, name in enumerate(_GROUPED) if name not in columns)


def _query(with_property: bool) -> tuple[str, dict[int, tuple[str, str]]]:
    """The statement and, by ``GROUPING()`` value, which cube and grain a result row is."""
    sets = _sets(with_property)
    extra = ["p.key", _STRING, _OTHER] if with_property else []
    grouping = ", ".join(
        "(" + ", ".join([*columns, *extra]) + ")" for _cube, _grain, columns in sets
    )
    selected = ", ".join(
        [f"GROUPING({', '.join(_GROUPED)})", *_GROUPED, *(extra or ["NULL", "NULL", "NULL"])]
    )
    source = _DAY_ROWS
    if with_property:
        source += f"{_PROPERTIES} WHERE json_typeof(p.value) <> 'null'"
    statement = f"SELECT {selected}, {_SUMS} FROM {source} GROUP BY GROUPING SETS ({grouping})"
    layout = {_mask(columns): (cube.name, grain) for cube, grain, columns in sets}
    return statement, layout


_OTHER_AT: Final = 2 + len(PLAIN_DIMENSIONS) + 2
"""Where a result row holds a property value that is not a JSON string."""

_PLAIN_QUERY: Final = _query(with_property=False)
_PROPERTY_QUERY: Final = _query(with_property=True)


async def rebuild_day_postgres(connection: AsyncConnection, day: datetime) -> tuple[int, int]:
    """Write the day's cells, summed by Postgres; returns records summed and cells written."""
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    records = written = 0
    others: list[dict[str, Any]] = []
    for statement, layout in (_PLAIN_QUERY, _PROPERTY_QUERY):
        batch: list[tuple[Any, ...]] = []
        cursor = driver.cursor(statement, day, day + timedelta(days=1), prefetch=FETCH_AHEAD)
        async for row in cursor:
            cube, grain = layout[row[0]]
            cell = _cell(cube, grain, day, tuple(row))
            if cube == "total" and grain == "hour":
                records += cell[len(_COLUMNS) - len(MEASURES)]
            if row[_OTHER_AT] is not None:  # a property value that is not a JSON string
                others.append(dict(zip(_COLUMNS, cell, strict=True)))
                continue
            batch.append(cell)
            if len(batch) >= COPY_BATCH:
                written += await _copy(driver, batch)
        written += await _copy(driver, batch)
    merged = _merge(others)
    await write_cells(connection, merged)
    return records, written + len(merged)


def _cell(cube: str, grain: str, day: datetime, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A result row as a ``rollups`` row: (GROUPING, hour, *dims, name, string, other, sums)."""
    _mask_value, hour, *rest = row
    plain = rest[: len(PLAIN_DIMENSIONS)]
    name, string, other = rest[len(PLAIN_DIMENSIONS) : len(PLAIN_DIMENSIONS) + 3]
    sums = rest[len(PLAIN_DIMENSIONS) + 3 :]
    value = string if other is None else _as_text(json.loads(other))
    dimensions = tuple(plain[i] for i in _POSITIONS[cube])
    values = dimensions if name is None else (name, value, *dimensions)
    bucket = day if grain == "day" else hour.replace(tzinfo=UTC)
    return (cube, grain, bucket, cell_id(values), *plain, name, value, *sums)


_POSITIONS: Final = {
    cube.name: tuple(PLAIN_DIMENSIONS.index(n) for n in cube.dimensions if n in PLAIN_DIMENSIONS)
    for cube in CUBES
}
"""Per cube: where its plain dimensions are among a result row's, in the cube's order (the
order ``cell_id`` hashes them in, as ``rollup_finest`` does)."""


def _as_text(value: Any) -> str:
    """A JSON value as ``property_pairs`` reads it."""
    return value if isinstance(value, str) else json.dumps(value)


async def _copy(driver: Any, batch: list[tuple[Any, ...]]) -> int:
    count = len(batch)
    if batch:
        await driver.copy_records_to_table(rollups.name, records=batch, columns=_COLUMNS)
        batch.clear()
    return count


def _merge(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells of the same key (two spellings of one value) summed into one, sorted by key."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    with localcontext(EXACT):
        for cell in cells:
            key = (cell["cube"], cell["grain"], cell["bucket_start"], cell["cell"])
            known = merged.get(key)
            if known is None:
                merged[key] = cell
            else:
                for name in MEASURES:
                    known[name] += cell[name]
    return [merged[key] for key in sorted(merged)]
