"""Postgres's fast way in for request rows: one lookup of the stored ids, then binary COPY.

COPY streams a batch in Postgres's binary format, which costs client and server less than
the multi-row ``INSERT ... VALUES ... ON CONFLICT DO NOTHING`` that SQLAlchemy renders for
it. COPY has no ``ON CONFLICT``, so the ids already stored are looked up first and left out,
which keeps ``write_records`` idempotent.

A writer that stores one of the same ids between the lookup and the COPY makes the COPY
fail, and so does a value the server refuses. ``CopyRefused`` then tells ``write_records``
(``proxy.store.rows``) to roll back and insert the batch the ordinary way, which skips the
conflict, or reports the value with the SQLAlchemy errors that ``is_permanent`` reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.tables import requests

COLUMNS = tuple(column.name for column in requests.columns)
"""The columns of a copied row, in table order."""

# Planned for its ids every time (``plan_cache_mode`` in ``proxy.store.engine``): an index
# scan, or a hashed scan of a small table, never a generic plan's scan per id. The batch's
# span of ``created_at`` lets Postgres look only in the partitions of those days (a replayed
# record has its first created_at exactly); it does not touch, nor wait for a lock on, the
# others.
_STORED_IDS = (
    "SELECT id FROM requests WHERE id = ANY($1::varchar[]) "
    "AND created_at BETWEEN $2::timestamptz AND $3::timestamptz"
)


class CopyRefused(Exception):
    """COPY did not take the batch; its transaction is aborted and must be rolled back."""


async def copy_requests(connection: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """Store the ``rows`` whose id is not stored yet, in ``connection``'s transaction.

    Returns the ids copied. Raises ``CopyRefused`` when the server or a column type refuses
    the rows.
    """
    try:
        # SQLAlchemy's asyncpg adapter begins the transaction at its first statement: this
        # one, so the COPY that goes to the driver directly is inside it.
        stored = await _stored_ids(connection, rows)
        driver_connection = (await connection.get_raw_connection()).driver_connection
        new = [row for row in rows if row["id"] not in stored]
        if new:
            await copy_rows(driver_connection, _records(connection.dialect, new))
    # Server refusals, and values that a bind processor or asyncpg's encoder refuses.
    except (asyncpg.PostgresError, TypeError, ValueError, ArithmeticError) as exc:
        raise CopyRefused(f"COPY refused {len(rows)} rows: {type(exc).__name__}: {exc}") from exc
    return {row["id"] for row in new}


async def copy_rows(driver_connection: Any, records: list[tuple[Any, ...]]) -> None:
    """The COPY itself, apart so that tests can act between the lookup and the COPY."""
    await driver_connection.copy_records_to_table(requests.name, records=records, columns=COLUMNS)


async def _stored_ids(connection: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    # As ``UTCDateTime`` binds them: a naive datetime is UTC.
    times = [_utc(row["created_at"]) for row in rows]
    found = await connection.exec_driver_sql(
        _STORED_IDS, ([row["id"] for row in rows], min(times), max(times))
    )
    return set(found.scalars())


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _records(dialect: Dialect, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """``rows`` as COPY tuples, each value converted as SQLAlchemy would bind it."""
    columns = list(zip(COLUMNS, _bind_processors(dialect), strict=True))
    return [
        tuple(row[name] if process is None else process(row[name]) for name, process in columns)
        for row in rows
    ]


@functools.lru_cache(maxsize=8)
def _bind_processors(dialect: Dialect) -> tuple[Callable[[Any], Any] | None, ...]:
    """Per column, what SQLAlchemy does to a value before asyncpg encodes it: JSON to text,
    money checked and rounded to its scale, datetimes to UTC; ``None`` where nothing."""
    return tuple(
        column.type.dialect_impl(dialect).bind_processor(dialect) for column in requests.columns
    )
