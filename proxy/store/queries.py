"""Read-only queries behind the usage REST API; rows come back as plain dicts."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.filters import (
    InvalidQuery,
    UsageFilters,
    failed,
    property_condition,
    property_text,
    request_conditions,
    time_bucket,
)
from proxy.store.partitions import id_time_window
from proxy.store.rollup_reads import (
    SUMMARY_STEPS,
    SUMMARY_TOKENS,
    plan_summary,
    session_model_query,
    summary_query,
)
from proxy.store.rollups import rollups_complete
from proxy.store.session_tree import session_tree
from proxy.store.tables import requests, session_paths, sessions

__all__ = ["GROUP_BY_CHOICES", "UNKNOWN_MODEL", "InvalidQuery", "UsageFilters", "UsageQueries"]

log = logging.getLogger(__name__)

GROUP_BY_CHOICES: Final = ("model", "user", "session", "endpoint", "day", "hour")
"""Plain ``group_by`` values of ``summary``; ``property:<name>`` is accepted too."""

UNKNOWN_MODEL: Final = "unknown"
"""Key of a session's ``models`` breakdown for requests without a model (e.g. GET /models)."""

_RECORD_ID = re.compile(r"[0-9a-f]{32}")


class UsageQueries:
    """Usage lookups over the ``requests`` and ``sessions`` tables."""

    def __init__(self, engine: AsyncEngine, *, use_rollups: bool = True) -> None:
        self._engine = engine
        self._ping_failing = False
        self._use_rollups = use_rollups
        # Once complete, rollups stay complete: the writer keeps them with every record.
        self._rollups_complete = False

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            async with self._engine.connect() as connection:
                await connection.execute(select(literal(1)))
        except Exception as exc:
            # /readyz's boundary: report "not ready" instead of failing the probe. Probes come
            # every few seconds: the first failure is a warning, the repeats are debug lines.
            level = logging.DEBUG if self._ping_failing else logging.WARNING
            self._ping_failing = True
            log.log(level, "database ping failed: %s", exc)
            return False
        if self._ping_failing:
            self._ping_failing = False
            log.info("database ping answered again")
        return True

    async def list_requests(
        self,
        session_id: str | None = None,
        user_id: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        property_name: str | None = None,
        property_value: str | None = None,
        key_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records matching the filters, newest first, and the cursor of the next page."""
        filters = UsageFilters(
            session_id, user_id, model, since, until, property_name, property_value, key_id
        )
        query = select(requests).where(*request_conditions(filters))
        if cursor is not None:
            query = query.where(requests.c.id < _decode_request_cursor(cursor))
        query = query.order_by(requests.c.id.desc()).limit(limit + 1)
        rows = await self._fetch(query)
        page, more = rows[:limit], len(rows) > limit
        return page, _encode(page[-1]["id"]) if more else None

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        """One record by id, or None."""
        query = select(requests).where(requests.c.id == request_id)
        window = id_time_window(request_id)
        if window is not None:
            # First around the time in the id: Postgres then plans and searches one or two
            # day partitions, not each of them (1 ms and more per 40).
            rows = await self._fetch(query.where(requests.c.created_at.between(*window)))
            if rows:
                return rows[0]
        rows = await self._fetch(query)
        return rows[0] if rows else None

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The totals of one session with its per-model breakdown and path tree, or None."""
        rows = await self._fetch(select(sessions).where(sessions.c.session_id == session_id))
        if not rows:
            return None
        await self._add_models(rows)
        nodes = await self._fetch(
            select(session_paths).where(session_paths.c.session_id == session_id)
        )
        rows[0]["tree"] = session_tree(rows[0], nodes)
        return rows[0]

    async def list_sessions(
        self,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        property_name: str | None = None,
        property_value: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Sessions active in [since, until), most recent activity first, and the next cursor.

        With ``property_name`` and ``property_value``: only sessions with at least one request
        carrying that property value.
        """
        query = select(sessions)
        if property_name is not None:
            tagged = select(requests.c.session_id).where(
                requests.c.session_id.is_not(None),
                property_condition(property_name, property_value),
            )
            query = query.where(sessions.c.session_id.in_(tagged))
        if user_id is not None:
            query = query.where(sessions.c.user_id == user_id)
        if since is not None:
            query = query.where(sessions.c.last_request_at >= since)
        if until is not None:
            query = query.where(sessions.c.first_request_at < until)
        if cursor is not None:
            last_at, last_id = _decode_session_cursor(cursor)
            query = query.where(
                or_(
                    sessions.c.last_request_at < last_at,
                    and_(sessions.c.last_request_at == last_at, sessions.c.session_id < last_id),
                )
            )
        query = query.order_by(
            sessions.c.last_request_at.desc(), sessions.c.session_id.desc()
        ).limit(limit + 1)
        rows = await self._fetch(query)
        page, more = rows[:limit], len(rows) > limit
        await self._add_models(page)
        if not more:
            return page, None
        last = page[-1]
        return page, _encode(json.dumps([last["last_request_at"].isoformat(), last["session_id"]]))

    async def summary(
        self, group_by: str, filters: UsageFilters | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Requests, tokens, cost, tool calls and errors per group; time buckets in order,
        other groups by size.

        Read from rollups whenever a cube answers the filters (``proxy.store.rollup_reads``),
        from raw rows otherwise; the answers are the same.
        """
        filters = filters or UsageFilters()
        key = self._group_key(group_by)
        conditions = request_conditions(filters)  # bad filters are refused on either path
        plan = plan_summary(group_by, filters) if self._use_rollups else None
        if plan is not None and await self._rollups_ready():
            dialect = self._engine.dialect.name
            return await self._fetch(summary_query(plan, filters, dialect, limit), serial=True)
        inner = (
            select(
                key.label("key"),
                *(requests.c[name] for name in SUMMARY_TOKENS),
                requests.c.cost_usd,
                requests.c.tool_calls,
                case((failed(), 1), else_=0).label("errors"),
            )
            .where(*conditions)
            .subquery()
        )
        # Grouping by the subquery's column, not by the expression itself: Postgres would not
        # see two renderings of ``properties ->> $n`` with different parameters as the same.
        count = func.count().label("requests")
        query = select(
            inner.c.key,
            count,
            *(func.coalesce(func.sum(inner.c[name]), 0).label(name) for name in SUMMARY_TOKENS),
            func.sum(inner.c.cost_usd).label("cost_usd"),
            (count - func.count(inner.c.cost_usd)).label("unpriced_requests"),
            *(func.coalesce(func.sum(inner.c[name]), 0).label(name) for name in SUMMARY_STEPS),
        ).group_by(inner.c.key)
        if group_by in ("day", "hour"):
            query = query.order_by(inner.c.key)
        else:
            query = query.order_by(count.desc(), inner.c.key.asc().nulls_last())
        return await self._fetch(query.limit(limit))

    async def _rollups_ready(self) -> bool:
        if not self._rollups_complete:
            async with self._engine.connect() as connection:
                self._rollups_complete = await rollups_complete(connection)
        return self._rollups_complete

    def _group_key(self, group_by: str) -> ColumnElement[Any]:
        columns = {
            "model": requests.c.model,
            "user": requests.c.user_id,
            "session": requests.c.session_id,
            "endpoint": requests.c.endpoint,
        }
        if group_by in columns:
            return columns[group_by]
        if group_by in ("day", "hour"):
            return time_bucket(self._engine.dialect.name, group_by)
        if group_by.startswith("property:"):
            return property_text(group_by.removeprefix("property:"), "group_by")
        choices = ", ".join((*GROUP_BY_CHOICES, "property:<name>"))
        raise InvalidQuery(f"invalid group_by {group_by!r}: use one of {choices}", "group_by")

    async def _add_models(self, summaries: Sequence[dict[str, Any]]) -> None:
        """Each session's requests, tokens and cost by model: from the ``session_model``
        cells once the rollups are complete, else from its records."""
        if not summaries:
            return
        by_id = {s["session_id"]: s for s in summaries}
        for s in summaries:
            s["models"] = {}
        # The sessions' own span: Postgres then searches the day partitions (or the days of
        # cells) it covers, not every partition's index once per session (100 x 30 days).
        first = min(s["first_request_at"] for s in summaries)
        last = max(s["last_request_at"] for s in summaries)
        if self._use_rollups and await self._rollups_ready():
            query = session_model_query(list(by_id), first, last)
        else:
            query = (
                select(
                    requests.c.session_id,
                    requests.c.model,
                    func.count().label("requests"),
                    func.coalesce(func.sum(requests.c.total_tokens), 0).label("total_tokens"),
                    func.sum(requests.c.cost_usd).label("cost_usd"),
                )
                .where(
                    requests.c.session_id.in_(list(by_id)),
                    requests.c.created_at.between(first, last),
                )
                .group_by(requests.c.session_id, requests.c.model)
            )
        for row in await self._fetch(query):
            breakdown = {k: row[k] for k in ("requests", "total_tokens", "cost_usd")}
            by_id[row["session_id"]]["models"][row["model"] or UNKNOWN_MODEL] = breakdown

    async def _fetch(self, query: Select[Any], *, serial: bool = False) -> list[dict[str, Any]]:
        async with self._engine.connect() as connection:
            if serial and connection.dialect.name == "postgresql":
                # A few thousand cells: starting parallel workers costs more than it saves
                # (a month by user read 7,800 cells in 9.6 ms alone, in 22 ms with two).
                await connection.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
            result = await connection.execute(query)
            # zip over plain rows: a thousand RowMappings copied by dict() cost ~5 ms more.
            names = tuple(result.keys())
            return [dict(zip(names, row, strict=True)) for row in result]


def _encode(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidQuery(
            "invalid cursor: pass next_cursor from the previous page", "cursor"
        ) from None


def _decode_request_cursor(cursor: str) -> str:
    last_id = _decode(cursor)
    if not _RECORD_ID.fullmatch(last_id):
        raise InvalidQuery("invalid cursor: pass next_cursor from the previous page", "cursor")
    return last_id


def _decode_session_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        last_at, last_id = json.loads(_decode(cursor))
        at = datetime.fromisoformat(last_at)
        if not isinstance(last_id, str):
            raise TypeError(last_id)
    except (ValueError, TypeError):
        raise InvalidQuery(
            "invalid cursor: pass next_cursor from the previous page", "cursor"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)), last_id
