"""The SQL of storing records: one row per record, additive per-session totals and rollups.

``write_records`` is idempotent: a record id already stored is skipped, and session totals
and rollups only grow by the rows actually inserted, so replaying a batch, or several
replicas sharing one Postgres, never counts a request twice. ``RecordWriter``
(``proxy.store.writer``) is its only caller on the serving path. On Postgres the rows go in
by COPY (``proxy.store.copy``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import String, case, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.records import RequestRecord
from proxy.store.budgets import settle as settle_budgets
from proxy.store.copy import CopyRefused, copy_requests
from proxy.store.cubes import is_error
from proxy.store.rollups import add_to_rollups
from proxy.store.tables import (
    SESSION_MEASURES,
    TOKEN_FIELDS,
    requests,
    session_paths,
    sessions,
)
from proxy.store.types import EXACT, stored_money

log = logging.getLogger(__name__)

InsertRequests = Callable[[AsyncConnection, list[dict[str, Any]]], Awaitable[set[str]]]
"""Stores request rows in a transaction, skipping stored ids; returns the ids it inserted."""


def is_permanent(exc: Exception) -> bool:
    """Errors about the values themselves, which no retry will fix."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        # asyncpg's errors reach SQLAlchemy as plain DBAPIError; their SQLSTATE tells.
        # Class 22 is "data exception", 23 "integrity constraint violation".
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        return sqlstate[:2] in ("22", "23")
    # Raised while binding values (e.g. a float where money must be Decimal).
    return isinstance(exc, StatementError)


async def write_records(engine: AsyncEngine, records: Sequence[RequestRecord]) -> int:
    """Insert ``records`` and add the new ones to their session totals, in one transaction.

    Returns how many rows were inserted; ids already present are skipped and not counted.
    """
    if not records:
        return 0
    # Unique and sorted by id: a duplicate inside the batch must not be summed twice, and a
    # fixed insertion order keeps concurrent writers from deadlocking on each other's rows.
    rows = sorted({r.id: record_row(r) for r in records}.values(), key=lambda row: row["id"])
    if engine.dialect.name == "postgresql":
        try:
            return await _write_rows(engine, rows, copy_requests)
        except CopyRefused as refused:
            # Rare: another writer stored one of these ids since the lookup, or a value is
            # refused. INSERT ... ON CONFLICT skips the first and raises the second as the
            # SQLAlchemy errors that ``is_permanent`` reads.
            log.debug("%s; inserting the batch instead", refused)
    return await _write_rows(engine, rows, _insert_requests)


async def _write_rows(
    engine: AsyncEngine, rows: list[dict[str, Any]], insert_requests: InsertRequests
) -> int:
    async with engine.begin() as connection:
        inserted_ids = await insert_requests(connection, rows)
        inserted = [row for row in rows if row["id"] in inserted_ids]
        await _upsert_sessions(connection, inserted)
        await settle_budgets(connection, inserted)
        await add_to_rollups(connection, inserted)  # last: it changes the plan cache mode
    return len(inserted_ids)


def record_row(record: RequestRecord) -> dict[str, Any]:
    """The ``requests`` row for one record: usage flattened, null token counts without usage."""
    usage = record.usage
    row: dict[str, Any] = {
        "id": record.id,
        "created_at": record.created_at,
        "endpoint": record.endpoint,
        "method": record.method,
        "status_code": record.status_code,
        "stream": record.stream,
        "model": record.model,
        "response_model": record.response_model,
        "upstream": record.upstream,
        "session_id": record.session_id,
        "user_id": record.user_id,
        "properties": {_text(k): _text(v) for k, v in record.properties.items()},
        "usage_source": record.usage_source,
        "usage_repaired": record.usage_repaired,
        # Rounded as stored, so session totals and rollups add what the rows hold. Anything
        # but a Decimal goes on as it is, for the column to refuse.
        "cost_usd": (
            stored_money(record.cost_usd)
            if isinstance(record.cost_usd, Decimal)
            else record.cost_usd
        ),
        "price_source": record.price_source,
        "price_version": record.price_version,
        "estimated_prompt_tokens": record.estimated_prompt_tokens,
        "estimated_completion_tokens": record.estimated_completion_tokens,
        "estimate_excludes": record.estimate_excludes,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "error": record.error,
        "key_id": record.key_id,
        "session_path": record.session_path,
        "session_name": record.session_name,
        "trace_id": record.trace_id,
        "span_id": record.span_id,
        "downgraded_from": record.downgraded_from,
        "tool_calls": record.tool_calls,
        "tool_results": record.tool_results,
    }
    for name in TOKEN_FIELDS:
        row[name] = None if usage is None else getattr(usage, name)
    for name, length in _TEXT_BOUNDS:
        # Client-supplied text (model, user, path) may hold NUL or exceed a bounded column:
        # Postgres refuses both, which would lose the record. Replace and clip, don't fail.
        value = row[name]
        if isinstance(value, str):
            value = _text(value)
            row[name] = value[:length] if length else value
    return row


_TEXT_BOUNDS = tuple(
    (column.name, column.type.length if isinstance(column.type, String) else None)
    for column in requests.columns
)
"""Each column's name and, for bounded text, its length: read once, not per record."""


def _text(value: str) -> str:
    """``value`` storable in Postgres text and JSONB, which cannot hold U+0000."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _insert(dialect_name: str, table: Any) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table)


async def _insert_requests(connection: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    statement = (
        _insert(connection.dialect.name, requests)
        # The key, (id, created_at): a replayed record comes with its own created_at.
        .on_conflict_do_nothing(index_elements=[requests.c.id, requests.c.created_at])
        .returning(requests.c.id)
    )
    result = await connection.execute(statement, rows)
    return set(result.scalars().all())


def _new_total(row: dict[str, Any], **key: Any) -> dict[str, Any]:
    return {
        **key,
        **dict.fromkeys(SESSION_MEASURES, 0),
        "cost_usd": None,
        "first_request_at": row["created_at"],
        "last_request_at": row["created_at"],
    }


def _add_row(total: dict[str, Any], row: dict[str, Any]) -> None:
    total["requests"] += 1
    for name in TOKEN_FIELDS:
        total[name] += row[name] or 0
    cost: Decimal | None = row["cost_usd"]
    if cost is None:
        total["unpriced_requests"] += 1
    else:
        known = total["cost_usd"]
        total["cost_usd"] = cost if known is None else EXACT.add(known, cost)
    total["errors"] += is_error(row)
    total["latency_ms"] += row["latency_ms"] or 0.0
    total["tool_calls"] += row["tool_calls"] or 0
    total["last_request_at"] = row["created_at"]


def _session_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sum the rows of each session of one batch, so each session is upserted once."""
    totals: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["created_at"], r["id"])):
        session_id = row["session_id"]
        if session_id is None:
            continue
        total = totals.get(session_id)
        if total is None:
            total = totals[session_id] = _new_total(
                row, session_id=session_id, user_id=None, name=None
            )
        _add_row(total, row)
        if row["user_id"] is not None:
            total["user_id"] = row["user_id"]
        if row["session_name"] is not None:
            total["name"] = row["session_name"]
    # A fixed order of row locks across replicas avoids deadlocks between concurrent batches.
    return [totals[key] for key in sorted(totals)]


def _path_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sum the rows of each session path node of one batch (the root ``/`` has no row)."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["created_at"], r["id"])):
        session_id, path = row["session_id"], row["session_path"]
        if session_id is None or path is None or path == "/":
            continue
        total = totals.get((session_id, path))
        if total is None:
            total = totals[session_id, path] = _new_total(row, session_id=session_id, path=path)
        _add_row(total, row)
    return [totals[key] for key in sorted(totals)]


async def _upsert_sessions(connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    totals = _session_totals(rows)
    if totals:
        await connection.execute(_session_upsert(connection.dialect.name), totals)
    nodes = _path_totals(rows)
    if nodes:
        await connection.execute(_path_upsert(connection.dialect.name), nodes)


def _added(table: Any, new: Any) -> dict[str, Any]:
    """The additive updates of an upsert into ``table``: old + new, the cost kept if known."""
    old = table.c
    updates: dict[str, Any] = {name: old[name] + new[name] for name in SESSION_MEASURES}
    updates |= {
        # null + x is null in SQL: the coalesce chain keeps whichever side is known.
        "cost_usd": func.coalesce(old.cost_usd + new.cost_usd, old.cost_usd, new.cost_usd),
        "first_request_at": case(
            (new.first_request_at < old.first_request_at, new.first_request_at),
            else_=old.first_request_at,
        ),
        "last_request_at": case(
            (new.last_request_at >= old.last_request_at, new.last_request_at),
            else_=old.last_request_at,
        ),
    }
    return updates


@functools.cache
def _session_upsert(dialect_name: str) -> Any:
    """The statement adding a batch's totals to ``sessions``; built once per dialect (it
    took milliseconds to build, per batch)."""
    statement = _insert(dialect_name, sessions)
    new = statement.excluded
    old = sessions.c
    newer = new.last_request_at >= old.last_request_at
    updates = _added(sessions, new)
    for name in ("user_id", "name"):  # the last one seen
        updates[name] = case(
            (newer & new[name].is_not(None), new[name]),
            else_=func.coalesce(old[name], new[name]),
        )
    return statement.on_conflict_do_update(index_elements=[old.session_id], set_=updates)


@functools.cache
def _path_upsert(dialect_name: str) -> Any:
    """The statement adding a batch's totals to ``session_paths``; built once per dialect."""
    statement = _insert(dialect_name, session_paths)
    keys = [session_paths.c.session_id, session_paths.c.path]
    return statement.on_conflict_do_update(
        index_elements=keys, set_=_added(session_paths, statement.excluded)
    )
