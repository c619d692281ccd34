"""The batch writer: the only code that writes records to the database.

Request handlers ``submit()`` items without awaiting anything; one background task turns
them into records (off the event loop) and writes them in batches with ``write_records``
(``proxy.store.rows``), which is idempotent: replaying a batch, or several replicas sharing
one Postgres, never counts a request twice. With a spool, the task that writes to the
database, spools and replays is ``proxy.store.database_stage``; this module keeps the queue,
preparing, the no-spool retry loop, lifecycle and stats. ``record_row`` and ``write_records``
are re-exported here for the callers that import them from this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.database_stage import RETRY_FIRST_DELAY, DatabaseStage, wait
from proxy.store.losses import Losses, LossReason
from proxy.store.rows import is_permanent, record_row, write_records
from proxy.store.spool import Spool

__all__ = ["RecordWriter", "Recordable", "record_row", "write_records"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_LAG = 10.0
"""Seconds an item may wait unwritten before the writer reports itself unhealthy."""
DEFAULT_LINGER = 0.02
"""Seconds a batch waits for company at low load (with a spool): records stay queryable
within well under a second while the writer's cost per record drops several-fold."""

DEFAULT_WRITE_TIMEOUT = 10.0
"""Seconds a batch write may take before the database counts as unavailable (spool mode)."""

_RETRY_MAX_DELAY = 30.0
_SPOOL_RESERVE = 5.0
_HANDOFF_BATCHES = 2


class Recordable(Protocol):
    """What the request path asks before serving, with ``database.when_unrecordable: refuse``."""

    @property
    def recordable(self) -> bool: ...


class RecordWriter(Generic[T]):
    """Queue submitted items and write them as ``RequestRecord`` rows in batches.

    ``prepare`` turns a batch of items into records (token estimation, pricing); it is CPU
    work and runs in a worker thread. A batch starts as soon as one item is queued and takes
    whatever else is already waiting, up to ``max_batch``: at low load a record is stored
    within a few milliseconds, under load batches grow by themselves. ``flush_interval``
    bounds how long the task ever sleeps, so items are never left pending longer than that
    even if a wake-up were missed.

    With a ``spool`` (what the app uses) the database never holds the queue up. One task
    prepares batches and hands them to a second task that writes them; a batch the database
    does not take (down, restarting, locked, or slower than ``write_timeout`` seconds) goes
    to the spool on local disk, and so do the batches after it while the database stays
    down. A database that is merely busy is waited for while the queue is less than half
    full (the queue grows and the next batch with it); past that, a batch that finds two
    batches already waiting for the database is spooled too. As soon as a write succeeds
    again (retried with backoff, at most every 5 s), new batches go to the database first
    and the spool is replayed between them (inserts are idempotent by id, so order does not
    matter). Records that neither the database nor the spool takes (disk full) are held in
    memory and offered again, the database first; held and queued records together are
    bounded by ``queue_size``, beyond which submits are refused and counted as lost, and
    ``recordable`` turns False. Requests never wait. Without a spool, a failed write is
    retried with backoff while submits keep queueing, up to ``queue_size``; beyond that
    items are dropped.

    Every lost record is counted in ``lost`` by reason (``dropped_total`` is their sum) and
    logged at most once a second.
    ``writable`` (spool mode) holds the database stage back while it says False: batches
    are spooled and the spool waits (the app's hook while the schema is not migrated).

    ``on_settled`` hears of every record the writer is done with: committed, fsync'd in the
    spool, or refused by the database for good (the journal then lets its line go).
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
        spool: Spool | None = None,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        linger: float = DEFAULT_LINGER,
        on_stored: Callable[[list[RequestRecord]], None] | None = None,
        writable: Callable[[], bool] | None = None,
        on_settled: Callable[[list[RequestRecord]], None] | None = None,
    ) -> None:
        if queue_size < 1 or max_batch < 1 or flush_interval <= 0 or write_timeout <= 0:
            raise ValueError(
                "queue_size and max_batch must be >= 1, flush_interval and write_timeout > 0"
            )
        self._engine = engine
        self._prepare = prepare
        self._queue_size = queue_size
        self._flush_interval = flush_interval
        self._linger = min(linger, flush_interval)
        self._max_batch = max_batch
        self._max_lag = max_lag
        self._spool = spool
        self._on_stored = on_stored
        self._on_settled = on_settled
        self._queue: deque[tuple[float, T]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._in_flight_count = 0
        self._in_flight_since: float | None = None
        self._losses = Losses(self._loss_context)
        # Spool mode: the stage that writes to the database, and its task.
        self._stage = None if spool is None else self._new_stage(spool, writable, write_timeout)
        self._db_task: asyncio.Task[None] | None = None
        # The stage's own objects, kept here too so that submit reaches them in one step as
        # before; without a spool they stay empty and unwatched.
        self._held = self._stage.held if self._stage is not None else deque()
        self._room = self._stage.room if self._stage is not None else asyncio.Event()
        self._failed_batches = 0  # without a spool; the stage counts its own
        self.written_total = 0
        """Records inserted (replayed duplicates are not counted)."""
        self.last_flush_at: datetime | None = None
        """When the last batch was committed."""

    def _new_stage(
        self, spool: Spool, writable: Callable[[], bool] | None, write_timeout: float
    ) -> DatabaseStage:
        return DatabaseStage(
            self._engine,
            spool,
            write=write_records,
            losses=self._losses,
            stored=self._stored,
            settled=self._settled,
            # False while the schema is not migrated (database down at start): spool, never
            # write into tables that are not there yet.
            writable=writable or (lambda: True),
            max_batch=self._max_batch,
            queue_size=self._queue_size,
            flush_interval=self._flush_interval,
            write_timeout=write_timeout,
        )

    # -- the request path -------------------------------------------------------------------

    def submit(self, item: T) -> bool:
        """Queue ``item`` for writing; never blocks. False (and counted as lost) when the
        queue, with the records held in memory, is full, or the writer is closed."""
        if self._closed or len(self._queue) + len(self._held) >= self._queue_size:
            reason: LossReason = "closed" if self._closed else "queue_full"
            if reason == "queue_full" and self._database_down:
                reason = "unstorable"  # memory full because the spool refused them too
            self._lose(1, reason)
            return False
        self._queue.append((time.monotonic(), item))
        self._wakeup.set()
        if len(self._queue) >= self._queue_size // 2:
            self._room.set()  # a pump waiting for a busy database must spool now
        return True

    @property
    def recordable(self) -> bool:
        """False while a new record could not be stored: the database is down and the spool
        refuses records (full, unwritable), or memory holds as many as ``queue_size``.
        Cheap (the request path asks it with ``database.when_unrecordable: refuse``)."""
        return not self._storage_blocked and len(self._queue) + len(self._held) < self._queue_size

    @property
    def _storage_blocked(self) -> bool:
        stage = self._stage
        return stage is not None and stage.spool_refusing and stage.down_since is not None

    @property
    def _database_down(self) -> bool:
        return self._stage is not None and self._stage.down_since is not None

    @property
    def failed_batches(self) -> int:
        """Batch writes that failed and were retried."""
        stage = self._stage
        return self._failed_batches + (stage.failed_batches if stage is not None else 0)

    @property
    def spooled_total(self) -> int:
        """Records written to the spool."""
        return self._stage.spooled_total if self._stage is not None else 0

    @property
    def replayed_total(self) -> int:
        """Spooled records since confirmed in the database."""
        return self._stage.replayed_total if self._stage is not None else 0

    @property
    def dropped_total(self) -> int:
        """Records lost, for any reason: the sum of ``lost``."""
        return self._losses.total

    @property
    def lost(self) -> Counter[LossReason]:
        """Records lost, by reason (see ``proxy.store.losses.LossReason``)."""
        return self._losses.by_reason

    def _lose(self, count: int, reason: LossReason) -> None:
        self._losses.count(count, reason)

    def _loss_context(self) -> str:
        state = "down" if self._database_down else "up"
        return (
            f"{len(self._queue)} queued and {len(self._held)} held in memory (bound "
            f"{self._queue_size}), database {state}; is the database reachable, the spool's "
            "disk full?"
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task(s); with a spool, first take over what it holds."""
        if self._task is not None:
            raise RuntimeError("RecordWriter already started")
        if self._spool is None or self._stage is None:
            self._task = asyncio.create_task(self._run(), name="tallyproxy-record-writer")
            return
        await self._spool.open()
        self._task = asyncio.create_task(self._pump(), name="tallyproxy-record-pump")
        self._db_task = asyncio.create_task(self._stage.run(), name="tallyproxy-db-writer")

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a shutdown budget)
        """Stop accepting items, write everything still queued, and return.

        Items submitted while the queue drains are still taken. Without a spool, gives up
        after ``timeout`` seconds (e.g. database down) and logs what was lost. With a spool,
        what the database has not taken when most of ``timeout`` has passed goes to the
        spool, for the next start to replay.
        """
        self._stopping = True
        self._wakeup.set()
        if self._stage is not None:
            self._stage.wakeup.set()
        written_before = self.written_total
        if self._stage is None:
            await _finish(self._task, timeout)
        else:
            await self._stop_spooling(timeout)
        self._closed = True
        lost = self.queue_depth
        if lost:
            self._lose(lost, "shutdown")
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
                "record writer stopped: wrote %d records while draining, %d in total; "
                "%d in the spool",
                self.written_total - written_before,
                self.written_total,
                self._spool.pending_records if self._spool is not None else 0,
            )

    async def _stop_spooling(self, budget: float) -> None:
        assert self._spool is not None and self._stage is not None
        stage = self._stage
        started = time.monotonic()
        # The database gets most of the budget; the rest is for spooling what it did not take.
        database_budget = budget - min(_SPOOL_RESERVE, budget / 4)
        tasks = {t for t in (self._task, self._db_task) if t is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=database_budget)
        if self._db_task is not None and not self._db_task.done():
            stage.abandoned = True  # from now on the pump spools everything
            self._wakeup.set()
            self._room.set()
            await _finish(self._db_task, 0)
        await _finish(self._task, max(0.0, budget - (time.monotonic() - started)))
        while stage.handoff:
            _, records = stage.handoff.popleft()
            await stage.spill(records)
        if self._held:  # one last offer to the spool; what it refuses stop() counts as lost
            held = list(self._held)
            self._held.clear()
            await stage.spill(held)
        await self._spool.close()

    # -- stats for /readyz ------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items submitted and not yet written nor spooled: queued plus batches in progress."""
        handoff = self._stage.handoff if self._stage is not None else ()
        waiting = sum(len(records) for _, records in handoff)
        return len(self._queue) + self._in_flight_count + waiting + len(self._held)

    @property
    def oldest_pending_age(self) -> float:
        """Seconds the oldest unwritten item has waited; 0 when nothing is pending."""
        starts = [self._in_flight_since] if self._in_flight_since is not None else []
        if self._queue:
            starts.append(self._queue[0][0])
        if self._stage is not None and self._stage.handoff:
            starts.append(self._stage.handoff[0][0])
        return max(0.0, time.monotonic() - min(starts)) if starts else 0.0

    @property
    def healthy(self) -> bool:
        """Running and keeping up: nothing has waited longer than ``max_lag`` seconds."""
        tasks = [t for t in (self._task, self._db_task) if t is not None]
        running = bool(tasks) and not any(t.done() for t in tasks)
        return running and self.oldest_pending_age <= self._max_lag

    def stats(self) -> dict[str, Any]:
        """The numbers /readyz shows; with a spool, its backlog too."""
        stats: dict[str, Any] = {
            "queue_depth": self.queue_depth,
            "written_total": self.written_total,
            "failed_batches": self.failed_batches,
            "dropped_total": self.dropped_total,
            "lost": dict(self.lost),
            "recordable": self.recordable,
            "last_flush_at": self.last_flush_at,
            "oldest_pending_age": round(self.oldest_pending_age, 3),
            "healthy": self.healthy,
        }
        if self._spool is not None and self._stage is not None:
            down_since = self._stage.down_since
            stats |= {
                "spool_records": self._spool.pending_records,
                "spool_bytes": self._spool.size_bytes,
                "spool_max_bytes": self._spool.max_bytes,
                "spooled_total": self.spooled_total,
                "replayed_total": self.replayed_total,
                "held_records": len(self._held),
                "database_down_seconds": (
                    None if down_since is None else round(time.monotonic() - down_since, 3)
                ),
            }
        return stats

    # -- preparing --------------------------------------------------------------------------

    async def _prepare_next(self) -> tuple[float, list[RequestRecord]]:
        """Take up to ``max_batch`` queued items and prepare them (in a worker thread)."""
        batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        self._in_flight_count = len(batch)
        self._in_flight_since = since = batch[0][0]
        records, dropped = await asyncio.to_thread(self._prepare_batch, [i for _, i in batch])
        if dropped:
            self._lose(dropped, "unpreparable")
        return since, records

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

    def _done_with_batch(self) -> None:
        self._in_flight_count = 0
        self._in_flight_since = None

    # -- without a spool: one task that retries ---------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    self._closed = True
                    return
                await wait(self._wakeup, self._flush_interval)
                continue
            _, records = await self._prepare_next()
            await self._write_with_retry(records)
            # Not in a finally: when stop() cancels a retrying batch, it is counted as lost.
            self._done_with_batch()

    async def _write_with_retry(self, records: list[RequestRecord]) -> None:
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                inserted = await write_records(self._engine, records)
            except Exception as exc:
                # The boundary between the writer and the database: anything can fail here
                # (network, failover, disk full). Keep the batch and try again, unless the
                # data itself is refused: then retrying would block the queue forever.
                if is_permanent(exc):
                    await self._write_one_by_one(records)
                    return
                self._failed_batches += 1
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
            self._stored(records, inserted)
            return

    async def _write_one_by_one(self, records: list[RequestRecord]) -> None:
        """Isolate the records the database refuses; write the others."""
        for record in records:
            try:
                await self._write_with_retry_single(record)
            except Exception:
                self._lose(1, "refused")
                log.exception("dropped record %s: the database refuses it", record.id)
                self._settled([record])

    async def _write_with_retry_single(self, record: RequestRecord) -> None:
        try:
            inserted = await write_records(self._engine, [record])
        except Exception as exc:
            if is_permanent(exc):
                raise
            await self._write_with_retry([record])  # transient: the usual retry loop
            return
        self._stored([record], inserted)

    # -- with a spool: a pump before the database stage ------------------------------------

    async def _pump(self) -> None:
        """Prepare queued batches; hand each to the database stage, or spool it."""
        assert self._stage is not None
        stage = self._stage
        try:
            while self._queue or not self._stopping:
                if not self._queue:
                    await wait(self._wakeup, self._flush_interval)
                    continue
                await self._wait_for_room()
                if len(self._queue) < self._max_batch and not self._stopping:
                    # A moment's wait turns a trickle of one-record batches (each a thread
                    # hop and a transaction) into a few larger ones.
                    await asyncio.sleep(self._linger)
                since, records = await self._prepare_next()
                if self._must_spool():
                    await stage.spill(records)
                else:
                    stage.handoff.append((since, records))
                    stage.wakeup.set()
                self._done_with_batch()
        finally:
            self._closed = stage.closed = True
            stage.wakeup.set()

    async def _wait_for_room(self) -> None:
        """Let a busy but working database catch up rather than spool: the queue grows
        meanwhile, and the next batch, larger, costs less per record. Only a database that
        fails or exceeds ``write_timeout``, or a queue half full, sends batches to disk."""
        assert self._stage is not None
        stage = self._stage
        while (
            len(stage.handoff) >= _HANDOFF_BATCHES
            and stage.down_since is None
            and not stage.abandoned
            and len(self._queue) < self._queue_size // 2
        ):
            await wait(self._room, self._flush_interval)

    def _must_spool(self) -> bool:
        assert self._stage is not None
        stage = self._stage
        # Not "while the spool holds records": a database back up is tried first, or a full
        # spool would take (and refuse) every new batch until it is replayed.
        return (
            stage.abandoned
            or stage.down_since is not None
            or len(stage.handoff) >= _HANDOFF_BATCHES
        )

    def _stored(self, records: list[RequestRecord], inserted: int) -> None:
        """After a commit: count it, and tell ``on_stored`` these records are in the database
        (inserted now, or by an earlier write that only seemed to fail)."""
        self.written_total += inserted
        self.last_flush_at = datetime.now(UTC)
        if self._on_stored is not None:
            try:
                self._on_stored(records)
            except Exception:
                log.exception("on_stored failed for a batch of %d records", len(records))
        self._settled(records)

    def _settled(self, records: list[RequestRecord]) -> None:
        if self._on_settled is not None and records:
            try:
                self._on_settled(records)
            except Exception:
                log.exception("on_settled failed for a batch of %d records", len(records))


async def _finish(task: asyncio.Task[None] | None, timeout: float) -> None:  # noqa: ASYNC109
    """Wait up to ``timeout`` for ``task``, then cancel it; log if it had crashed."""
    if task is None:
        return
    # asyncio.wait neither raises nor cancels: a crash is logged, a timeout cancels.
    done, _ = await asyncio.wait({task}, timeout=timeout) if timeout > 0 else (set(), set())
    if not done and not task.done():
        task.cancel()
        await asyncio.wait({task})
    elif not task.cancelled() and task.exception() is not None:
        log.error("record writer task %s had crashed", task.get_name(), exc_info=task.exception())
