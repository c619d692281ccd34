"""Reconciliation's reads and writes: local totals from the ``upstream_model`` cube, the
stored comparisons, and the schedule that lets one replica run each round.

A comparison is stored only whole: every bucket of one run in one transaction, replacing
the bucket's earlier comparison (a day is compared again until it is closed and final).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.store.tables import reconcile_runs, reconciliations, rollups

CUBE = "upstream_model"
_LOCAL_COLUMNS = ("requests", "error_requests", "prompt_tokens", "cached_tokens",
                  "completion_tokens", "cost_usd", "unpriced_requests")  # fmt: skip


async def local_cells(
    engine: AsyncEngine,
    upstreams: Sequence[str],
    since: datetime,
    until: datetime,
    grain: str,
) -> list[dict[str, Any]]:
    """The ``upstream_model`` cells of ``upstreams`` (URLs) with buckets in ``[since, until)``:
    a few per model and bucket, read through the rollups' primary key."""
    if not upstreams:
        return []
    c = rollups.c
    query = select(c.bucket_start, c.upstream, c.model, *(c[n] for n in _LOCAL_COLUMNS)).where(
        c.cube == CUBE,
        c.grain == grain,
        c.bucket_start >= since,
        c.bucket_start < until,
        c.upstream.in_(list(upstreams)),
    )
    async with engine.connect() as connection:
        result = await connection.execute(query)
        return [dict(row._mapping) for row in result]


class ReconciliationStore:
    """Stored comparisons and the periodic job's schedule."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def save(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store one run's buckets (rows of ``reconciliations``), replacing earlier ones;
        a bucket's alert, once claimed, stays claimed."""
        if not rows:
            return
        async with self._engine.begin() as connection:
            statement = _insert(connection, reconciliations)
            kept = {"provider", "bucket_width", "bucket_start", "alerted_at"}
            statement = statement.on_conflict_do_update(
                index_elements=[
                    reconciliations.c.provider,
                    reconciliations.c.bucket_width,
                    reconciliations.c.bucket_start,
                ],
                set_={
                    column.name: statement.excluded[column.name]
                    for column in reconciliations.columns
                    if column.name not in kept
                },
            )
            await connection.execute(statement, [{**row, "alerted_at": None} for row in rows])

    async def stored(
        self, provider: str | None, width: str, since: datetime, until: datetime
    ) -> list[dict[str, Any]]:
        """The stored comparisons of buckets starting in ``[since, until)``, oldest first
        (``provider`` None: every provider's)."""
        c = reconciliations.c
        conditions = [c.bucket_width == width, c.bucket_start >= since, c.bucket_start < until]
        if provider is not None:
            conditions.append(c.provider == provider)
        query = select(reconciliations).where(*conditions).order_by(c.bucket_start, c.provider)
        async with self._engine.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(query)]

    async def claim_alert(self, provider: str, width: str, start: datetime, now: datetime) -> bool:
        """True for the one caller, across replicas, that marks this bucket's alert first."""
        c = reconciliations.c
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(reconciliations)
                .where(
                    c.provider == provider,
                    c.bucket_width == width,
                    c.bucket_start == start,
                    c.alerted_at.is_(None),
                )
                .values(alerted_at=now)
            )
            return bool(result.rowcount)

    async def claim_run(self, provider: str, now: datetime, interval: timedelta) -> bool:
        """True when this replica is to run ``provider``'s round now (it was due, and this
        replica moved ``due_at`` on first)."""
        c = reconcile_runs.c
        async with self._engine.begin() as connection:
            await connection.execute(
                _insert(connection, reconcile_runs)
                .on_conflict_do_nothing(index_elements=[c.provider])
                .values(provider=provider, due_at=now)
            )
            result = await connection.execute(
                update(reconcile_runs)
                .where(c.provider == provider, c.due_at <= now)
                .values(due_at=now + interval, started_at=now)
            )
            return bool(result.rowcount)

    async def finish_run(self, provider: str, now: datetime, error: str | None) -> None:
        """Note how the round ended (``error``: what went wrong, naming the call)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                update(reconcile_runs)
                .where(reconcile_runs.c.provider == provider)
                .values(finished_at=now, last_error=error)
            )


def _insert(connection: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
