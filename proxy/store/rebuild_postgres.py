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

from proxy.store.cubes import CUBES, DERIVED_GRAINS, MEASURES, PLAIN_DIMENSIONS, Cube, cell_id
from proxy.store.rollups import write_cells
from proxy.store.tables import TOKEN_FIELDS, rollups
from proxy.store.types import EXACT

COPY_BATCH = 20_000
FETCH_AHEAD = 10_000

_GROUPABLE: Final = ("hour", *PLAIN_DIMENSIONS)
"""The columns a grouping set may hold, in the order of ``GROUPING()``'s arguments: a set
bit is a column the set does not group by."""

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
        "coalesce(sum(tool_calls), 0)",
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
        for grain in (g for g in cube.grains if g not in DERIVED_GRAINS):  # summed from days
            found.append((cube, grain, ("hour", *plain) if grain == "hour" else plain))
    return found


def _mask(columns: tuple[str, ...], grouped: tuple[str, ...]) -> int:
    bits = len(grouped) - 1
    return sum(1 << (bits - i) for i, name in enumerate(grouped) if name not in columns)


Layout = dict[int, tuple[str, str, tuple[int, ...], bool]]
"""By ``GROUPING()`` value: the cube and grain of a result row, where the cube's dimensions
are in the row (in the cube's order, the order ``cell_id`` hashes them in, as
``rollup_finest`` does) and whether it is a property cube."""

_FIRST_DIMENSION: Final = 3
"""A result row: GROUPING(), hour, a non-string property value (JSON), then the ``rollups``
columns from ``model`` on: the dimensions, property name and value, the sums."""


def _query(with_property: bool) -> tuple[str, Layout]:
    """The statement, and how to read its result rows."""
    sets = _sets(with_property)
    # GROUPING() takes only columns some set of this query groups by.
    grouped = tuple(c for c in _GROUPABLE if any(c in columns for _, _, columns in sets))
    dimensions = [d if d in grouped else f"NULL AS {d}" for d in PLAIN_DIMENSIONS]
    extra = ["p.key", _STRING, _OTHER] if with_property else []
    grouping = ", ".join(
        "(" + ", ".join([*columns, *extra]) + ")" for _cube, _grain, columns in sets
    )
    name, string, other = extra or ["NULL", "NULL", "NULL"]
    selected = ", ".join(
        [f"GROUPING({', '.join(grouped)})", "hour", other, *dimensions, name, string]
    )
    source = _DAY_ROWS
    if with_property:
        source += f"{_PROPERTIES} WHERE json_typeof(p.value) <> 'null'"
    # The empty set (the total per day) makes a row even of a day without rows: not a cell.
    statement = (
        f"SELECT {selected}, {_SUMS} FROM {source} GROUP BY GROUPING SETS ({grouping})"
        " HAVING count(*) > 0"
    )
    layout = {
        _mask(columns, grouped): (
            cube.name,
            grain,
            tuple(
                _FIRST_DIMENSION + PLAIN_DIMENSIONS.index(n)
                for n in cube.dimensions
                if n in PLAIN_DIMENSIONS
            ),
            cube.has_property,
        )
        for cube, grain, columns in sets
    }
    return statement, layout


_PLAIN_QUERY: Final = _query(with_property=False)
_PROPERTY_QUERY: Final = _query(with_property=True)
_NAME_AT: Final = _FIRST_DIMENSION + len(PLAIN_DIMENSIONS)
_REQUESTS_AT: Final = len(_COLUMNS) - len(MEASURES)


async def rebuild_day_postgres(connection: AsyncConnection, day: datetime) -> tuple[int, int]:
    """Write the day's cells, summed by Postgres; returns records summed and cells written."""
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    records = written = 0
    others: list[dict[str, Any]] = []
    hours: dict[datetime, datetime] = {}
    for statement, layout in (_PLAIN_QUERY, _PROPERTY_QUERY):
        batch: list[tuple[Any, ...]] = []
        cursor = driver.cursor(statement, day, day + timedelta(days=1), prefetch=FETCH_AHEAD)
        async for row in cursor:
            cube, grain, positions, has_property = layout[row[0]]
            dimensions = tuple(row[i] for i in positions)
            if has_property:
                if row[2] is not None:  # a value that is not a JSON string: rare, upserted
                    others.append(_renamed(cube, grain, day, row))
                    continue
                dimensions = (row[_NAME_AT], row[_NAME_AT + 1], *dimensions)
            if grain == "day":
                bucket = day
            else:
                bucket = hours.get(row[1]) or hours.setdefault(row[1], row[1].replace(tzinfo=UTC))
            cell = (cube, grain, bucket, cell_id(dimensions), *row[_FIRST_DIMENSION:])
            if cube == "total" and grain == "hour":
                records += cell[_REQUESTS_AT]
            batch.append(cell)
            if len(batch) >= COPY_BATCH:
                written += await _copy(driver, batch)
        written += await _copy(driver, batch)
    merged = _merge(others)
    await write_cells(connection, merged)
    return records, written + len(merged)


def _renamed(cube: str, grain: str, day: datetime, row: Any) -> dict[str, Any]:
    """A property cell whose value is not a JSON string, its value as Python reads it."""
    values = list(row[_FIRST_DIMENSION:])
    values[_NAME_AT + 1 - _FIRST_DIMENSION] = value = _as_text(json.loads(row[2]))
    dimensions = tuple(row[i] for i in _PROPERTY_QUERY[1][row[0]][2])
    bucket = day if grain == "day" else row[1].replace(tzinfo=UTC)
    name = row[_NAME_AT]
    cell = (cube, grain, bucket, cell_id((name, value, *dimensions)), *values)
    return dict(zip(_COLUMNS, cell, strict=True))


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
