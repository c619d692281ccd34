"""The SQL of anomalies: each subject's spend per window from the hourly rollups, the
subject's top requests, and the ``anomalies`` rows (claimed once, listed newest first).

A window's cost and tokens are sums of a cube's hourly cells (``session``, ``user``,
``key``), so a detection reads the cells of the baseline days, not the records. A session's
peer group is its user, from ``sessions`` (the user last seen).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.anomalies.detect import Anomaly, Observation
from proxy.money import format_usd
from proxy.store.tables import anomalies, requests, rollups, sessions

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUBJECT_COLUMNS: Final = {"session": "session_id", "user": "user_id", "key": "key_id"}


def window_start(moment: datetime, hours: int) -> datetime:
    """The start of the ``hours``-long window holding ``moment`` (windows from 1970, UTC)."""
    size = timedelta(hours=hours)
    return _EPOCH + size * ((moment.astimezone(UTC) - _EPOCH) // size)


def windows_of(kind: str, rows: Sequence[Any], hours: int, grouped: bool) -> list[Observation]:
    """Hourly sums (subject, [peer group,] hour, cost, tokens) summed into windows."""
    windows: dict[tuple[str, str | None, datetime], list[Any]] = defaultdict(
        lambda: [Decimal(0), 0]
    )
    for row in rows:
        subject, peer = row[0], row[1] if grouped else None
        bucket, cost, tokens = row[-3:]
        sums = windows[subject, peer, window_start(bucket, hours)]
        sums[0] += cost or 0
        sums[1] += int(tokens or 0)
    return [
        Observation(kind, subject, peer, start, cost, tokens)
        for (subject, peer, start), (cost, tokens) in windows.items()
    ]


class AnomalyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def observations(
        self, kind: str, since: datetime, until: datetime, hours: int
    ) -> list[Observation]:
        """Per subject of ``kind`` and ``hours``-long window in ``[since, until)``: its cost
        and tokens, summed from hourly cells."""
        cells = rollups.c
        column = cells[_SUBJECT_COLUMNS[kind]]
        group = sessions.c.user_id if kind == "session" else None
        query = (
            select(
                column.label("subject"),
                *([group.label("peer_group")] if group is not None else []),
                cells.bucket_start,
                func.sum(cells.cost_usd).label("cost_usd"),
                func.sum(cells.total_tokens).label("total_tokens"),
            )
            .where(
                cells.cube == kind,
                cells.grain == "hour",
                cells.bucket_start >= since,
                cells.bucket_start < until,
                column.is_not(None),
            )
            .group_by(column, cells.bucket_start, *([group] if group is not None else []))
        )
        if group is not None:
            query = query.select_from(
                rollups.outerjoin(sessions, sessions.c.session_id == cells.session_id)
            )
        rows: list[Any] = []
        async with self._engine.connect() as connection:
            # In slices, and summed in a thread: 70,000 cells (a thousand users over 7 days)
            # read at once would hold the event loop, and the requests it serves, for ~1 s.
            result = await connection.stream(query)
            async for part in result.partitions(2000):
                rows.extend(part)
        return await asyncio.to_thread(windows_of, kind, rows, hours, group is not None)

    async def top_requests(
        self, kind: str, subject: str, start: datetime, end: datetime, limit: int
    ) -> list[dict[str, Any]]:
        """The subject's costliest requests in the window (then the largest in tokens)."""
        c = requests.c
        query = (
            select(c.id, c.created_at, c.model, c.session_id, c.user_id, c.total_tokens, c.cost_usd)
            .where(c[_SUBJECT_COLUMNS[kind]] == subject, c.created_at >= start, c.created_at < end)
            .order_by(c.cost_usd.desc().nulls_last(), c.total_tokens.desc().nulls_last(), c.id)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [
            {
                "id": row["id"],
                "created_at": row["created_at"].astimezone(UTC).isoformat(),
                "model": row["model"],
                "session_id": row["session_id"],
                "user_id": row["user_id"],
                "total_tokens": row["total_tokens"],
                "cost_usd": None if row["cost_usd"] is None else format_usd(row["cost_usd"]),
            }
            for row in rows
        ]

    async def claim(
        self, anomaly: Anomaly, hours: int, top: list[dict[str, Any]], at: datetime
    ) -> dict[str, Any] | None:
        """Store the anomaly unless its subject and window are stored already; the row for
        the one caller, across replicas, that stored it, else None."""
        seen = anomaly.observation
        row = {
            "id": secrets.token_hex(16),
            "kind": seen.kind,
            "subject": seen.subject,
            "peer_group": seen.peer_group,
            "window_start": seen.window_start,
            "window_end": seen.window_start + timedelta(hours=hours),
            "detected_at": at,
            "cost_usd": seen.cost_usd,
            "total_tokens": seen.total_tokens,
            "baseline": {
                e.measure: {
                    "value": format_usd(e.value),
                    "median": format_usd(e.baseline.median),
                    "mad": format_usd(e.baseline.mad),
                    "threshold": format_usd(e.threshold),
                    "peers": e.baseline.peers,
                    "observations": e.baseline.observations,
                }
                for e in anomaly.exceeded
            },
            "top_requests": top,
        }
        async with self._engine.begin() as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            statement = (
                dialect.insert(anomalies)
                .on_conflict_do_nothing(
                    index_elements=[anomalies.c.kind, anomalies.c.subject, anomalies.c.window_start]
                )
                .returning(anomalies.c.id)
            )
            claimed = (await connection.execute(statement, row)).first() is not None
        return row if claimed else None

    async def known(self, kind: str, start: datetime) -> set[str]:
        """The subjects of ``kind`` already stored for the window starting at ``start``."""
        c = anomalies.c
        query = select(c.subject).where(c.kind == kind, c.window_start == start)
        async with self._engine.connect() as connection:
            return set((await connection.execute(query)).scalars())

    async def mark_delivered(self, anomaly_id: str, at: datetime) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(anomalies).where(anomalies.c.id == anomaly_id).values(delivered_at=at)
            )

    async def listing(
        self,
        *,
        kind: str | None = None,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Stored anomalies, newest window first; ``since``/``until`` bound the window start."""
        c = anomalies.c
        query = select(anomalies)
        if kind is not None:
            query = query.where(c.kind == kind)
        if subject is not None:
            query = query.where(c.subject == subject)
        if since is not None:
            query = query.where(c.window_start >= since)
        if until is not None:
            query = query.where(c.window_start < until)
        query = query.order_by(c.window_start.desc(), c.kind, c.subject).limit(limit)
        async with self._engine.connect() as connection:
            return [dict(row) for row in (await connection.execute(query)).mappings()]


def anomaly_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored anomaly on the wire (the API and the webhook): times ISO-8601 UTC, money as
    decimal strings."""

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    return {
        "id": row["id"],
        "kind": row["kind"],
        "subject": row["subject"],
        "peer_group": row["peer_group"],
        "window_start": iso(row["window_start"]),
        "window_end": iso(row["window_end"]),
        "detected_at": iso(row["detected_at"]),
        "cost_usd": format_usd(row["cost_usd"]),
        "total_tokens": row["total_tokens"],
        "baseline": row["baseline"],
        "top_requests": row["top_requests"],
        "delivered_at": iso(row.get("delivered_at")),
    }
