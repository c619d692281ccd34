"""Rollups as data: which dimensions each cube keeps, and how request rows sum into cells.

A *cube* is a set of dimensions (model, user, ...). Each cube is kept per UTC hour and per
UTC day (the *grain*): one rollup row, a *cell*, per bucket and combination of the cube's
dimension values, holding additive measures (requests, every token field, known cost,
unpriced requests, errors, latency, tool calls). Because every measure is a plain sum, a
cell can grow by a batch of new records, shrink by a repriced record's old cost, and be
recomputed from raw rows: the same function, ``rollup_rows``, serves the writer,
``reprice`` and a rebuild.

A property cube has one cell per property name and value, so a record with three
properties counts once in each of three cells; records without a property of some name are
the difference between a cube without properties and the cells of that name.

Pure functions over plain dicts: the SQL lives in ``proxy.store.rollups``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any, Final

from proxy.records import is_failure
from proxy.store.tables import TOKEN_FIELDS
from proxy.store.types import EXACT

PLAIN_DIMENSIONS: Final = ("model", "user_id", "key_id", "endpoint", "upstream", "session_id")
"""Dimensions that are columns of ``requests``; ``property`` (name and value) is the other."""

PROPERTY: Final = "property"

COUNTS: Final = ("requests", *TOKEN_FIELDS, "unpriced_requests", "error_requests",
                 "latency_requests", "tool_calls")  # fmt: skip
"""Integer measures of a cell."""

MEASURES: Final = (*COUNTS, "cost_usd", "latency_ms_sum")
"""Every measure of a cell: the counts, the sum of known costs and the sum of latencies."""


@dataclass(frozen=True, slots=True)
class Cube:
    """A named set of dimensions, kept at ``grains``; ``PROPERTY`` is property name and value."""

    name: str
    dimensions: tuple[str, ...]
    grains: tuple[str, ...] = ("hour",)

    @property
    def has_property(self) -> bool:
        return PROPERTY in self.dimensions

    def covers(self, needed: Iterable[str]) -> bool:
        """True when every dimension in ``needed`` is one of this cube's."""
        return set(needed) <= set(self.dimensions)


_BOTH = ("hour", "day")
_WEEKLY = ("hour", "day", "week")

DERIVED_GRAINS: Final = ("week",)
"""Grains whose cells are the sums of a cube's daily cells: the writer adds to them as to the
others, and a rebuild sums them again from the rebuilt days (``proxy.store.weeks``)."""

CUBES: Final = (
    Cube("total", (), _BOTH),
    Cube("model", ("model",)),
    Cube("endpoint", ("endpoint",)),
    Cube("upstream", ("upstream",)),
    Cube("key", ("key_id",)),
    Cube("upstream_model", ("upstream", "model"), _BOTH),
    Cube("property", (PROPERTY,), _BOTH),
    Cube("user", ("user_id",), _WEEKLY),
    Cube("session", ("session_id",), _BOTH),
    Cube("property_model", (PROPERTY, "model")),
    Cube("property_user", (PROPERTY, "user_id"), _WEEKLY),
    Cube("model_user", ("model", "user_id"), ("day",)),
    Cube("session_model", ("session_id", "model"), ("day",)),
)
"""Smallest first, so the first cube covering a query's dimensions is the cheapest to read.

The small cubes (a few dozen cells an hour) are kept per hour and read hourly for any range.
Cubes by user or session are kept per day as well: a thousand users make 720,000 hourly cells
in 30 days, 30,000 daily ones, and a month's summary by user must not read the former. So are
the total and the property cube (a day is a few dozen cells), which a summary by property
subtracts from one another and so must read at the same grain.
The two by user are kept per week too (Monday to Monday, UTC): a month by user for one
property value reads 4 weeks and 2 days of cells, 6,000, where its days are 30,000 (on a
2-core machine, 28 of the 50 ms such a summary took at 10 M records).
Model by user is kept per day only: per hour, 1,000 users and 20 models make nearly a cell
per record, which would cost the writer as much again as the records, for a view whose
partial days the records of the edges answer well enough (see ``proxy.store.rollup_reads``).
Session by model, per day only, is the breakdown a session listing shows beside each
session's totals: a page of 100 sessions is a few thousand cells (ix_rollups_session leads
to them), where its raw rows are some 14,000.
Upstream by model (a few dozen cells a day) is what a reconciliation with a provider's
report reads: that provider's upstreams, per model, per day or hour.
Combinations no cube holds (a virtual key with a model, an endpoint with a user, ...) are
selective filters: they are summed from the records, through their indexes.
"""

CUBES_BY_NAME: Final = {cube.name: cube for cube in CUBES}


def smallest_cube(needed: Iterable[str], grain: str | None = None) -> Cube | None:
    """The cheapest cube holding every dimension in ``needed`` (kept at ``grain`` if given),
    or None."""
    needed = set(needed)
    return next(
        (c for c in CUBES if (grain is None or grain in c.grains) and c.covers(needed)), None
    )


def bucket_start(moment: datetime, grain: str) -> datetime:
    """The start of the UTC hour, day or week (from Monday, as Postgres's ``date_trunc``)
    holding ``moment`` (an aware UTC datetime)."""
    hour = moment.replace(minute=0, second=0, microsecond=0)
    if grain == "hour":
        return hour
    day = hour.replace(hour=0)
    return day - timedelta(days=day.weekday()) if grain == "week" else day


@functools.lru_cache(maxsize=1 << 16)
def cell_id(values: tuple[str | None, ...]) -> str:
    """A short stable key for one combination of dimension values, null distinct from "".

    It is the primary key's last column, so that cells of any cube fit one table and one
    ``ON CONFLICT`` target whatever their dimensions (nullable columns cannot be in a key).
    The MD5 of each value length-prefixed ("v<bytes>:<value>", "n" for null), which
    Postgres computes the same way (``proxy.store.rollups_sql``). Cached: the same users and
    models come back batch after batch.
    """
    text = "".join("n" if v is None else f"v{len(v.encode())}:{v}" for v in values)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def record_measures(rows: list[Mapping[str, Any]]) -> list[Any]:
    """What request rows add to a cell, in ``MEASURES`` order."""
    if len(rows) == 1:
        return _row_measures(rows[0])
    costs = [row["cost_usd"] for row in rows]
    latencies = [row["latency_ms"] for row in rows]
    return [
        len(rows),
        *(sum(row[name] or 0 for row in rows) for name in TOKEN_FIELDS),
        costs.count(None),
        sum(map(is_error, rows)),
        len(latencies) - latencies.count(None),
        sum(row["tool_calls"] or 0 for row in rows),
        sum((cost for cost in costs if cost is not None), _ZERO),
        sum((float(latency) for latency in latencies if latency is not None), 0.0),
    ]


def _row_measures(row: Mapping[str, Any]) -> list[Any]:
    cost: Decimal | None = row["cost_usd"]
    latency = row["latency_ms"]
    return [
        1,
        *(row[name] or 0 for name in TOKEN_FIELDS),
        1 if cost is None else 0,
        is_error(row),
        0 if latency is None else 1,
        row["tool_calls"] or 0,
        _ZERO if cost is None else cost,
        0.0 if latency is None else float(latency),
    ]


def is_error(row: Mapping[str, Any]) -> int:
    """1 for a failed request (``is_failure``), 0 otherwise."""
    return 1 if is_failure(row["status_code"], row["error"]) else 0


Finest = dict[tuple[Any, ...], list[Any]]
"""Sums by finest cell: key (hour, every plain dimension, the property pairs), ``MEASURES``."""


def finest_cells(rows: Iterable[Mapping[str, Any]], sign: int = 1) -> Finest:
    """``rows`` (``requests`` rows) summed by hour, every dimension and property set; with
    ``sign=-1`` negated, which is what taking the rows out of the rollups means.

    A batch of similar records collapses here, so cubes cost one sum per finest cell rather
    than one per record.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (
            bucket_start(row["created_at"], "hour"),
            *(row[name] for name in PLAIN_DIMENSIONS),
            property_pairs(row["properties"]),
        )
        groups.setdefault(key, []).append(row)
    with localcontext(EXACT):  # money sums exact to 60 digits, whatever the default context
        finest = {key: record_measures(group) for key, group in groups.items()}
    if sign < 0:
        return {key: [-value for value in measures] for key, measures in finest.items()}
    return finest


def rollup_rows(rows: Iterable[Mapping[str, Any]], sign: int = 1) -> list[dict[str, Any]]:
    """The cells that ``rows`` (``requests`` rows) add to, with their sums, sorted by key
    (``sign=-1``: the sums negated)."""
    return rollup_finest(finest_cells(rows, sign))


def rollup_finest(finest: Mapping[tuple[Any, ...], list[Any]]) -> list[dict[str, Any]]:
    """Every cube's cells summed from the finest cells, sorted by key.

    A finest cell's key is ``(hour, *PLAIN_DIMENSIONS values, property_pairs(...))`` and its
    value the measures in ``MEASURES`` order: a rebuild sums raw rows into these in SQL.
    """
    cells: Finest = {}
    with localcontext(EXACT):
        for (hour, *plain, properties), measures in finest.items():
            day = hour.replace(hour=0)
            buckets = {"hour": hour, "day": day, "week": day - timedelta(days=day.weekday())}
            for cube, grains, positions in _LAYOUT:
                values = tuple(plain[i] for i in positions)
                for grain in grains:
                    bucket = buckets[grain]
                    if cube.has_property:
                        for name, value in properties:
                            add_measures(
                                cells, (cube, grain, bucket, (name, value, *values)), measures
                            )
                    else:
                        add_measures(cells, (cube, grain, bucket, values), measures)
    result = [_cell_row(key, measures) for key, measures in cells.items()]
    # A fixed order of row locks across replicas keeps concurrent batches from deadlocking.
    result.sort(key=lambda cell: (cell["cube"], cell["grain"], cell["bucket_start"], cell["cell"]))
    return result


_ZERO = Decimal(0)

_LAYOUT: Final = tuple(
    (
        cube,
        cube.grains,
        tuple(PLAIN_DIMENSIONS.index(name) for name in cube.dimensions if name != PROPERTY),
    )
    for cube in CUBES
)
"""Per cube: its grains and where its plain dimensions sit in a finest cell's key."""


def add_measures(sums: Finest, key: tuple[Any, ...], more: list[Any]) -> None:
    """Add ``more`` (measures in ``MEASURES`` order) to the sums kept under ``key``."""
    known = sums.get(key)
    sums[key] = list(more) if known is None else [a + b for a, b in zip(known, more, strict=True)]


def property_pairs(properties: Any) -> tuple[tuple[str, str], ...]:
    """A row's properties as the usage API reads them (``properties ->> name``): text values,
    JSON text for other JSON values (rows imported by SQL), and a null value as no value.
    Anything but a JSON object (an array put in by SQL) has no property ``->>`` can read."""
    if not properties or not isinstance(properties, Mapping):
        return ()
    return tuple(
        sorted(
            (name, value if isinstance(value, str) else json.dumps(value))
            for name, value in properties.items()
            if value is not None
        )
    )


def _cell_row(key: tuple[Any, ...], measures: list[Any]) -> dict[str, Any]:
    cube, grain, bucket, dimensions = key
    row: dict[str, Any] = {
        "cube": cube.name,
        "grain": grain,
        "bucket_start": bucket,
        "cell": cell_id(dimensions),
        **dict.fromkeys((*PLAIN_DIMENSIONS, "property_name", "property_value")),
    }
    names = [name for name in cube.dimensions if name != PROPERTY]
    if cube.has_property:
        row["property_name"], row["property_value"], *plain = dimensions
    else:
        plain = list(dimensions)
    row.update(zip(names, plain, strict=True))
    row.update(zip(MEASURES, measures, strict=True))
    return row
