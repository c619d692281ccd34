"""The batch writer: the only code that writes records to the database.

Request handlers ``submit()`` items without awaiting anything; one background task turns
them into records (off the event loop) and writes them in batches. Writes are idempotent:
a record id already stored is skipped, and session totals only grow by the rows that were
actually inserted, so replaying a batch, or several replicas sharing one Postgres, never
counts a request twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy import String, case, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.records import RequestRecord
from proxy.store.tables import TOKEN_FIELDS, requests, sessions
from proxy.store.types import EXACT

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_LAG = 10.0
"""Seconds an item may wait unwritten before the writer reports itself unhealthy."""

_RETRY_FIRST_DELAY = 0.25
_RETRY_MAX_DELAY = 30.0
_DROP_WARNING_INTERVAL = 5.0


class RecordWriter(Generic[T]):
    """Queue submitted items and write them as ``RequestRecord`` rows in batches.

    ``prepare`` turns a batch of items into records (token estimation, pricing); it is CPU
    work and runs in a worker thread. A batch starts as soon as one item is queued and takes
    whatever else is already waiting, up to ``max_batch``: at low load a record is stored
    within a few milliseconds, under load batches grow by themselves. ``flush_interval``
    bounds how long the task ever sleeps, so items are never left pending longer than that
    even if a wake-up were missed. A failed write is kept and retried with backoff while new
    submits keep queueing, up to ``queue_size``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        prepare: Callable[[list[T]], list[RequestRecord]],
        *,
        queue_size: int = 10000,
        flush_interval: float = 0.5,
        max_batch: int = 500,
        max_lag: float = DEFAULT_MAX_LAG,
    ) -> None:
        if queue_size < 1 or max_batch < 1 or flush_interval <= 0:
            raise ValueError("queue_size and max_batch must be >= 1, flush_interval > 0")
        self._engine = engine
        self._prepare = prepare
        self._queue_size = queue_size
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._max_lag = max_lag
        self._queue: deque[tuple[float, T]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_flight_count = 0
        self._in_flight_since: float | None = None
        self._last_drop_warning = 0.0
        self.written_total = 0
        """Records inserted (replayed duplicates are not counted)."""
        self.failed_batches = 0
        """Batch writes that failed and were retried."""
        self.dropped_total = 0
        """Items refused because the queue was full, or that ``prepare`` could not handle."""
        self.last_flush_at: datetime | None = None
        """When the last batch was committed."""

    # -- the request path -------------------------------------------------------------------

    def submit(self, item: T) -> bool:
        """Queue ``item`` for writing; never blocks. False when the queue is full or stopped."""
        if self._stopping or len(self._queue) >= self._queue_size:
            self.dropped_total += 1
            now = time.monotonic()
            if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL:
                self._last_drop_warning = now
                log.warning(
                    "record writer %s: dropped a record (%d dropped so far, %d queued, "
                    "queue size %d, %d failed batches); is the database reachable?",
                    "stopped" if self._stopping else "full",
                    self.dropped_total,
                    len(self._queue),
                    self._queue_size,
                    self.failed_batches,
                )
            return False
        self._queue.append((time.monotonic(), item))
        self._wakeup.set()
        return True

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task that writes batches."""
        if self._task is not None:
            raise RuntimeError("RecordWriter already started")
        self._task = asyncio.create_task(self._run(), name="tallyproxy-record-writer")

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a shutdown budget)
        """Stop accepting items, write everything still queued, and return.

        Gives up after ``timeout`` seconds (e.g. database down) and logs what was lost.
        """
        self._stopping = True
        self._wakeup.set()
        written_before = self.written_total
        if self._task is not None:
            # asyncio.wait neither raises nor cancels: a crash is logged, a timeout cancels.
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task})
            elif not self._task.cancelled() and self._task.exception() is not None:
                log.error("record writer task had crashed", exc_info=self._task.exception())
        lost = len(self._queue) + self._in_flight_count
        if lost:
            log.error(
                "record writer stopped after %.1fs with %d records unwritten; wrote %d "
                "while draining, %d in total",
                timeout,
                lost,
                self.written_total - written_before,
                self.written_total,
            )
        else:
            log.info(
                "record writer stopped: wrote %d records while draining, %d in total",
                self.written_total - written_before,
                self.written_total,
            )

    # -- stats for /readyz ------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items submitted and not yet written: queued plus the batch being written."""
        return len(self._queue) + self._in_flight_count

    @property
    def oldest_pending_age(self) -> float:
        """Seconds the oldest unwritten item has waited; 0 when nothing is pending."""
        starts = [self._in_flight_since] if self._in_flight_since is not None else []
        if self._queue:
            starts.append(self._queue[0][0])
        return max(0.0, time.monotonic() - min(starts)) if starts else 0.0

    @property
    def healthy(self) -> bool:
        """Running and keeping up: nothing has waited longer than ``max_lag`` seconds."""
        running = self._task is not None and not self._task.done()
        return running and self.oldest_pending_age <= self._max_lag

    def stats(self) -> dict[str, Any]:
        """The numbers /readyz shows."""
        return {
            "queue_depth": self.queue_depth,
            "written_total": self.written_total,
            "failed_batches": self.failed_batches,
            "dropped_total": self.dropped_total,
            "last_flush_at": self.last_flush_at,
            "oldest_pending_age": round(self.oldest_pending_age, 3),
            "healthy": self.healthy,
        }

    # -- the writer task --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
                except TimeoutError:
                    continue
                continue
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._in_flight_count = len(batch)
            self._in_flight_since = batch[0][0]
            items = [item for _, item in batch]
            records, dropped = await asyncio.to_thread(self._prepare_batch, items)
            self.dropped_total += dropped
            await self._write_with_retry(records)
            # Not in a finally: when stop() cancels a retrying batch, it is counted as lost.
            self._in_flight_count = 0
            self._in_flight_since = None

    def _prepare_batch(self, items: list[T]) -> tuple[list[RequestRecord], int]:
        """Run ``prepare`` (in a worker thread); one bad item must not lose the whole batch."""
        try:
            return self._prepare(items), 0
        except Exception:
            log.exception("preparing a batch of %d records failed; retrying one by one", len(items))
        records: list[RequestRecord] = []
        dropped = 0
        for item in items:
            try:
                records.extend(self._prepare([item]))
            except Exception:
                dropped += 1
                log.exception("dropped a record that could not be prepared")
        return records, dropped

    async def _write_with_retry(self, records: list[RequestRecord]) -> None:
        delay = _RETRY_FIRST_DELAY
        while True:
            try:
                inserted = await write_records(self._engine, records)
            except Exception as exc:
                # The boundary between the writer and the database: anything can fail here
                # (network, failover, disk full). Keep the batch and try again, unless the
                # data itself is refused: then retrying would block the queue forever.
                if _is_permanent(exc):
                    await self._write_one_by_one(records)
                    return
                self.failed_batches += 1
                log.exception(
                    "writing a batch of %d records failed (%d failures so far, %d queued); "
                    "retrying in %.2fs",
                    len(records),
                    self.failed_batches,
                    len(self._queue),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_DELAY)
                continue
            self.written_total += inserted
            self.last_flush_at = datetime.now(UTC)
            return

    async def _write_one_by_one(self, records: list[RequestRecord]) -> None:
        """Isolate the records the database refuses; write the others."""
        for record in records:
            try:
                await self._write_with_retry_single(record)
            except Exception:
                self.dropped_total += 1
                log.exception("dropped record %s: the database refuses it", record.id)

    async def _write_with_retry_single(self, record: RequestRecord) -> None:
        try:
            inserted = await write_records(self._engine, [record])
        except Exception as exc:
            if _is_permanent(exc):
                raise
            await self._write_with_retry([record])  # transient: the usual retry loop
            return
        self.written_total += inserted
        self.last_flush_at = datetime.now(UTC)


def _is_permanent(exc: Exception) -> bool:
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
    async with engine.begin() as connection:
        inserted_ids = await _insert_requests(connection, rows)
        inserted = [row for row in rows if row["id"] in inserted_ids]
        await _upsert_sessions(connection, inserted)
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
        "properties": dict(record.properties),
        "usage_source": record.usage_source,
        "cost_usd": record.cost_usd,
        "price_source": record.price_source,
        "price_version": record.price_version,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "error": record.error,
    }
    for name in TOKEN_FIELDS:
        row[name] = None if usage is None else getattr(usage, name)
    for column in requests.columns:
        # Client-supplied text (model, user) may exceed a bounded column: clip, don't fail.
        value = row[column.name]
        if isinstance(column.type, String) and column.type.length and isinstance(value, str):
            row[column.name] = value[: column.type.length]
    return row


def _insert(connection: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def _insert_requests(connection: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    statement = (
        _insert(connection, requests)
        .on_conflict_do_nothing(index_elements=[requests.c.id])
        .returning(requests.c.id)
    )
    result = await connection.execute(statement, rows)
    return set(result.scalars().all())


def _session_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sum the rows of each session of one batch, so each session is upserted once."""
    totals: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["created_at"], r["id"])):
        session_id = row["session_id"]
        if session_id is None:
            continue
        total = totals.get(session_id)
        if total is None:
            total = totals[session_id] = {
                "session_id": session_id,
                "user_id": None,
                "requests": 0,
                **dict.fromkeys(TOKEN_FIELDS, 0),
                "cost_usd": None,
                "unpriced_requests": 0,
                "first_request_at": row["created_at"],
                "last_request_at": row["created_at"],
            }
        total["requests"] += 1
        for name in TOKEN_FIELDS:
            total[name] += row[name] or 0
        cost: Decimal | None = row["cost_usd"]
        if cost is None:
            total["unpriced_requests"] += 1
        else:
            known = total["cost_usd"]
            total["cost_usd"] = cost if known is None else EXACT.add(known, cost)
        total["last_request_at"] = row["created_at"]
        if row["user_id"] is not None:
            total["user_id"] = row["user_id"]
    # A fixed order of row locks across replicas avoids deadlocks between concurrent batches.
    return [totals[key] for key in sorted(totals)]


async def _upsert_sessions(connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    totals = _session_totals(rows)
    if not totals:
        return
    statement = _insert(connection, sessions)
    new = statement.excluded
    old = sessions.c
    additive = ("requests", *TOKEN_FIELDS, "unpriced_requests")
    newer = new.last_request_at >= old.last_request_at
    updates: dict[str, Any] = {name: old[name] + new[name] for name in additive}
    updates |= {
        # null + x is null in SQL: the coalesce chain keeps whichever side is known.
        "cost_usd": func.coalesce(old.cost_usd + new.cost_usd, old.cost_usd, new.cost_usd),
        "user_id": case(
            (newer & new.user_id.is_not(None), new.user_id),
            else_=func.coalesce(old.user_id, new.user_id),
        ),
        "first_request_at": case(
            (new.first_request_at < old.first_request_at, new.first_request_at),
            else_=old.first_request_at,
        ),
        "last_request_at": case((newer, new.last_request_at), else_=old.last_request_at),
    }
    statement = statement.on_conflict_do_update(index_elements=[old.session_id], set_=updates)
    await connection.execute(statement, totals)
