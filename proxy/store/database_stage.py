"""The record writer's database stage in spool mode: the database first, the spool behind it.

The writer's pump prepares batches and hands them over here (``handoff``); the stage writes
them, spools (``spill``) what the database does not take, holds in memory what the spool
refuses too, and replays the spool between new batches whenever the database takes writes.
A database that fails or exceeds ``write_timeout`` counts as down (``down_since``) and is
probed with backoff. This is the task that awaits the database, so the pump, and the
request path behind it, never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.losses import Losses, Throttle
from proxy.store.rows import is_permanent
from proxy.store.spool import Spool

# The writer's own logger: these lines are the writer's, and are filtered or routed with it.
log = logging.getLogger("proxy.store.writer")

RETRY_FIRST_DELAY = 0.25
_SPOOL_RETRY_MAX_DELAY = 5.0
# While the spool refuses records too, each second without the database may cost records:
# it is probed more often (a refused connection costs next to nothing).
_BLOCKED_RETRY_MAX_DELAY = 0.1


class DatabaseStage:
    """Writes handed-over and held batches, spools what the database does not take, and
    replays the spool; ``run`` is its task. ``write`` is ``proxy.store.rows.write_records``
    (given by the writer, which owns that name); ``stored`` hears of every commit (records
    and how many were inserted), ``settled`` of records spooled or refused for good."""

    def __init__(
        self,
        engine: AsyncEngine,
        spool: Spool,
        *,
        write: Callable[[AsyncEngine, list[RequestRecord]], Awaitable[int]],
        losses: Losses,
        stored: Callable[[list[RequestRecord], int], None],
        settled: Callable[[list[RequestRecord]], None],
        writable: Callable[[], bool],
        max_batch: int,
        queue_size: int,
        flush_interval: float,
        write_timeout: float,
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._write = write
        self._losses = losses
        self._stored = stored
        self._settled = settled
        self._writable = writable
        self._max_batch = max_batch
        self._queue_size = queue_size
        self._flush_interval = flush_interval
        self._write_timeout = write_timeout
        self._spool_log = Throttle()
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST_DELAY
        self.handoff: deque[tuple[float, list[RequestRecord]]] = deque()
        """Prepared batches (with when their oldest item was queued) waiting for the stage."""
        self.wakeup = asyncio.Event()
        self.room = asyncio.Event()
        """Set when a pump waiting for a busy database should look again."""
        self.held: deque[RequestRecord] = deque()
        """Records neither the database nor the spool took (disk full), offered again."""
        self.down_since: float | None = None
        self.spool_refusing = False
        self.abandoned = False
        """Set by a stop whose database time is up: from then on the pump spools everything."""
        self.closed = False
        """Set when the pump is done: nothing more will be handed over."""
        self.failed_batches = 0
        self.spooled_total = 0
        self.replayed_total = 0

    async def run(self) -> None:
        """Write held and handed-over batches, the database first, and replay the spool
        between them whenever the database takes writes."""
        replay_turn = False
        while True:
            now = time.monotonic()
            writable = self._writable()  # False until the schema is migrated
            retry_due = now >= self._retry_at and writable
            replay_due = bool(self._spool.pending_records) and retry_due and not self.closed
            if self.held and writable and (self.down_since is None or retry_due):
                await self._offer_held()
            elif self.handoff and not (replay_turn and replay_due):
                await self._write_handoff()
                replay_turn = True
            elif replay_due:
                await self._replay_batch()
                replay_turn = False
            elif self.closed and not self.handoff and not self.held:
                return
            else:
                timeout = self._flush_interval
                if writable and (self._spool.pending_records or self.held):
                    timeout = min(timeout, self._retry_at - now)
                await wait(self.wakeup, max(timeout, 0.001))

    async def spill(self, records: list[RequestRecord]) -> None:
        """Spool ``records``; hold in memory those the spool refuses, to offer them again."""
        try:
            kept = await self._spool.append(records)
            error: OSError | None = self._spool.last_error
        except OSError as exc:  # no slot, directory unwritable: nothing was written
            kept, error = 0, exc
        self.spooled_total += kept
        self._settled(records[:kept])
        refused = records[kept:]
        self.spool_refusing = bool(refused)
        if refused:
            self.held.extend(refused)
            self._log_spool_refused(len(refused), error)

    def _log_spool_refused(self, count: int, error: OSError | None) -> None:
        if not self._spool_log.ready():
            return
        why = f"{type(error).__name__}: {error}" if error is not None else "at its bound"
        log.error(
            "the spool %s refused %d records (%s; %d of %d bytes used): holding %d records "
            "in memory (bound %d) and offering them again, the database first",
            self._spool.location,
            count,
            why,
            self._spool.size_bytes,
            self._spool.max_bytes,
            len(self.held),
            self._queue_size,
        )

    async def _write_handoff(self) -> None:
        # The batch leaves the handoff only once written or spilled: a stop that cancels
        # this task then spools it (or counts it as lost), never forgets it.
        records = self.handoff[0][1]
        skip = self.down_since is not None or not self._writable()
        unwritten = records if skip else await self._write_or_keep(records)
        if unwritten:
            await self.spill(unwritten)
        self.handoff.popleft()
        self.room.set()

    async def _offer_held(self) -> None:
        """Offer held records to the database (which, if down, this write probes), then to
        the spool; what neither takes is held again (at the end: order does not matter)."""
        count = min(self._max_batch, len(self.held))
        batch = list(itertools.islice(self.held, count))
        unwritten = await self._write_or_keep(batch)
        if unwritten:
            await self.spill(unwritten)
        # Only now, as above; others only ever append to the held records, on the right.
        for _ in range(count):
            self.held.popleft()

    async def _replay_batch(self) -> None:
        batch = await self._spool.read(self._max_batch)
        if batch is None:
            return
        if not await self._write_or_keep(batch.records):
            await self._spool.acknowledge(batch)
            self.spool_refusing = False  # room again: worth offering the spool records
            self.replayed_total += len(batch.records)
            if not self._spool.pending_records:
                log.info("spool replayed: %d records in total", self.replayed_total)

    async def _write_or_keep(self, records: list[RequestRecord]) -> list[RequestRecord]:
        """Write ``records``; return those the database did not take for a transient reason."""
        try:
            await self._insert(records)
            return []
        except Exception as exc:
            # The boundary between the writer and the database: anything can fail here
            # (network, failover, lock timeouts, disk full).
            if not is_permanent(exc):
                self._database_failed(exc, len(records))
                return records
        # Some value is refused: isolate it, or retrying would block the queue forever.
        for index, record in enumerate(records):
            try:
                await self._insert([record])
            except Exception as exc:
                if not is_permanent(exc):
                    self._database_failed(exc, len(records) - index)
                    return records[index:]
                self._losses.count(1, "refused")
                log.exception("dropped record %s: the database refuses it", record.id)
                self._settled([record])
        return []

    async def _insert(self, records: list[RequestRecord]) -> None:
        inserted = await asyncio.wait_for(self._write(self._engine, records), self._write_timeout)
        self._stored(records, inserted)
        if self.down_since is not None:
            log.warning(
                "database writable again after %.1fs; replaying %d spooled records "
                "(%d records lost in total)",
                time.monotonic() - self.down_since,
                self._spool.pending_records,
                self._losses.total,
            )
            self.down_since = None
            self._retry_at = 0.0

    def _database_failed(self, exc: Exception, count: int) -> None:
        self.failed_batches += 1
        self.room.set()  # a pump waiting for the database must spool instead
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self._retry_delay = RETRY_FIRST_DELAY
            log.error(
                "the database did not take %d records (%s); spooling records to %s and "
                "retrying with backoff",
                count,
                _describe(exc, self._write_timeout),
                self._spool.location,
            )
        else:
            longest = _BLOCKED_RETRY_MAX_DELAY if self.spool_refusing else _SPOOL_RETRY_MAX_DELAY
            self._retry_delay = min(self._retry_delay * 2, longest)
            log.debug("database still unavailable: %s", _describe(exc, self._write_timeout))
        self._retry_at = now + self._retry_delay


async def wait(event: asyncio.Event, timeout: float) -> None:  # noqa: ASYNC109
    """Wait for ``event`` (then clear it) or ``timeout`` seconds, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()


def _describe(exc: Exception, write_timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {write_timeout}s"
    return f"{type(exc).__name__}: {str(exc)[:300]}"
