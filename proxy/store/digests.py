"""The SQL of the daily digest: its figures, read from the rollups, and the claim of a day.

Every figure is a sum of rollup cells (``proxy.store.cubes``): the totals and the users and
property values from daily cells, the models from hourly ones (their cube is kept per hour
only), so a digest reads a few hundred cells however many records the days hold. A day is
claimed by inserting its ``digest_runs`` row, as budget alerts claim theirs: of replicas
racing at the hour, one inserts the row and sends the digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.digest.content import Totals
from proxy.money import format_usd
from proxy.store.rollups import rollups_complete
from proxy.store.tables import anomalies, digest_runs, rollups

_DAY = timedelta(days=1)
_BREAKDOWNS = {
    "model": ("model", "hour", ("model",)),
    "user": ("user", "day", ("user_id",)),
    "property": ("property", "day", ("property_name", "property_value")),
}


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


class DigestStore:
    """Reads the figures of a digest and claims days, on one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def daily_totals(self, first: date, last: date) -> dict[date, Totals]:
        """Totals per UTC day from ``first`` to ``last`` (both in); days without records
        are absent."""
        cells = rollups.c
        query = (
            select(cells.bucket_start, *_measures())
            .where(
                cells.cube == "total",
                cells.grain == "day",
                cells.bucket_start >= midnight(first),
                cells.bucket_start < midnight(last) + _DAY,
            )
            .group_by(cells.bucket_start)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return {row["bucket_start"].astimezone(UTC).date(): _totals(row) for row in rows}

    async def breakdown(self, dimension: str, day: date) -> dict[str, Totals]:
        """Totals of ``day`` by model, user or property (``name=value``), from rollups."""
        cube, grain, columns = _BREAKDOWNS[dimension]
        cells = rollups.c
        keys = [cells[name] for name in columns]
        query = (
            select(*keys, *_measures())
            .where(
                cells.cube == cube,
                cells.grain == grain,
                cells.bucket_start >= midnight(day),
                cells.bucket_start < midnight(day) + _DAY,
            )
            .group_by(*keys)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return {_key(row, columns): _totals(row) for row in rows}

    async def rollups_complete(self) -> bool:
        async with self._engine.connect() as connection:
            return await rollups_complete(connection)

    async def anomalies_of(self, day: date) -> list[dict[str, Any]]:
        """The anomalies whose window started on ``day``, in order."""
        c = anomalies.c
        query = (
            select(c.kind, c.subject, c.window_start, c.cost_usd, c.total_tokens)
            .where(c.window_start >= midnight(day), c.window_start < midnight(day) + _DAY)
            .order_by(c.window_start, c.kind, c.subject)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [
            {
                "kind": row["kind"],
                "subject": row["subject"],
                "window_start": row["window_start"].astimezone(UTC).isoformat(),
                "cost_usd": format_usd(row["cost_usd"]),
                "total_tokens": row["total_tokens"],
            }
            for row in rows
        ]

    async def claim(self, day: date, at: datetime) -> bool:
        """True for the one caller, across replicas, that records this day's digest first."""
        async with self._engine.begin() as connection:
            statement = (
                _insert(connection)
                .on_conflict_do_nothing(index_elements=[digest_runs.c.day])
                .returning(digest_runs.c.day)
            )
            row = {"day": midnight(day), "claimed_at": at}
            return (await connection.execute(statement, row)).first() is not None

    async def claimed(self, day: date) -> bool:
        query = select(digest_runs.c.day).where(digest_runs.c.day == midnight(day))
        async with self._engine.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def mark_delivered(self, day: date, at: datetime) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(digest_runs)
                .where(digest_runs.c.day == midnight(day))
                .values(delivered_at=at)
            )


def _measures() -> Sequence[ColumnElement[Any]]:
    cells = rollups.c
    return (
        func.sum(cells.requests).label("requests"),
        func.sum(cells.total_tokens).label("total_tokens"),
        func.sum(cells.cost_usd).label("cost_usd"),
        func.sum(cells.unpriced_requests).label("unpriced_requests"),
    )


def _totals(row: Any) -> Totals:
    return Totals(
        requests=int(row["requests"] or 0),
        tokens=int(row["total_tokens"] or 0),
        cost_usd=Decimal(row["cost_usd"] or 0),
        unpriced_requests=int(row["unpriced_requests"] or 0),
    )


def _key(row: Any, columns: tuple[str, ...]) -> str:
    if columns == ("property_name", "property_value"):
        return f"{row['property_name']}={row['property_value']}"
    value = row[columns[0]]
    return "(none)" if value is None else str(value)


def _insert(connection: AsyncConnection) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(digest_runs)
