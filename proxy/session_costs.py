"""A session's running cost for the caller, at once: stored total plus what is not stored yet.

The database holds the session total of every record the writers have stored. This process's
records are noted here when they are answered, and leave in one of two ways:

- the writer confirms it committed them (``confirm_stored``): their cost moves into a sum of
  committed costs, and their ids are dropped, because the next read will see them;
- a read finds them stored: one statement reads both the stored total and which of the still
  unconfirmed ids are stored, so a batch committed meanwhile is counted exactly once.

So only records not yet committed (queued, in a batch, spooled while the database is away)
are kept by id, and only those are asked about: a busy session's ids no longer pile up
between two reads.

The database is read once per session per ``refresh`` seconds, not per request: between
reads, the stored total read last plus this process's records since is exact for this
process. Records of other replicas show up at the next read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import String, any_, bindparam, literal, null, select, union_all
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import Exchange, RequestRecord
from proxy.store.tables import requests, sessions
from proxy.store.types import EXACT

log = logging.getLogger(__name__)

MAX_SESSIONS = 10_000
MAX_PENDING_AGE = 900.0
"""Seconds after which an unseen record is forgotten (the database was down that long)."""

ZERO = Decimal(0)


@dataclass
class _Session:
    stored: Decimal | None = None
    read_at: float | None = None
    # record id -> (cost, when noted): this process's records not known to be stored.
    pending: dict[str, tuple[Decimal, float]] = field(default_factory=dict)
    # Their sum, kept as they come and go rather than summed per request.
    pending_total: Decimal = ZERO
    # Costs of records the writer committed since the last read began: the next read sees them.
    committed_total: Decimal = ZERO
    # While a read is on its way: the committed costs and ids it will see for sure, and the
    # pending ids it asks about. Ids committed meanwhile stay pending until it ends.
    reading: asyncio.Task[None] | None = None
    in_read_total: Decimal = ZERO
    seen_for_sure: set[str] = field(default_factory=set)
    asked: frozenset[str] = frozenset()
    committed_during_read: set[str] = field(default_factory=set)

    def total(self) -> Decimal:
        seen = EXACT.add(self.stored or ZERO, self.in_read_total)
        return EXACT.add(EXACT.add(seen, self.committed_total), self.pending_total)

    def add_pending(self, record_id: str, cost: Decimal) -> None:
        self.forget(record_id)
        self.pending[record_id] = (cost, time.monotonic())
        self.pending_total = EXACT.add(self.pending_total, cost)

    def forget(self, record_id: str) -> Decimal | None:
        """Drop a pending record; its cost, or None when it was not pending."""
        entry = self.pending.pop(record_id, None)
        if entry is None:
            return None
        self.committed_during_read.discard(record_id)
        self.pending_total = EXACT.subtract(self.pending_total, entry[0])
        return entry[0]

    def committed(self, record_id: str) -> None:
        """The writer stored the record. With no read on its way, any later read sees it:
        its cost joins the committed sum and its id goes. During a read, whether that read
        saw it is unknown; it is settled when the read ends."""
        if record_id not in self.pending:
            return
        if self.reading is None:
            self._fold(record_id)
        else:
            self.committed_during_read.add(record_id)

    def _fold(self, record_id: str) -> None:
        cost = self.forget(record_id)
        if cost is not None:
            self.committed_total = EXACT.add(self.committed_total, cost)

    def begin_read(self) -> list[str]:
        """The pending ids a read must ask about; the others it will see for sure."""
        self.seen_for_sure, self.committed_during_read = self.committed_during_read, set()
        self.in_read_total, self.committed_total = self.committed_total, ZERO
        asked = [record_id for record_id in self.pending if record_id not in self.seen_for_sure]
        self.asked = frozenset(asked)
        return asked

    def end_read(self, stored: Decimal | None, stored_ids: Iterable[str], at: float) -> None:
        for record_id in (*stored_ids, *self.seen_for_sure):
            self.forget(record_id)
        # Asked, not found stored, then committed: committed after the read's snapshot.
        for record_id in self.committed_during_read & self.asked:
            self._fold(record_id)
        self.stored, self.read_at = stored, at
        self._read_over()

    def read_failed(self) -> None:
        self.committed_total = EXACT.add(self.committed_total, self.in_read_total)
        self.committed_during_read |= self.seen_for_sure & self.pending.keys()
        self._read_over()

    def _read_over(self) -> None:
        self.in_read_total, self.seen_for_sure, self.asked = ZERO, set(), frozenset()


class SessionCosts:
    """Running session totals for ``X-Tally-Session-Cost-USD`` and the stream's tally."""

    def __init__(self, engine: AsyncEngine, timeout: float = 0.25, refresh: float = 5.0) -> None:
        self._engine = engine
        self._timeout = timeout
        self._refresh = refresh
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first
        self._postgres = engine.dialect.name == "postgresql"

    def note(self, session_id: str, record_id: str, cost: Decimal) -> None:
        """Remember a priced record of the session that the database may not have yet."""
        self._session(session_id).add_pending(record_id, cost)

    def confirm_stored(self, records: Iterable[RequestRecord]) -> None:
        """The writer's word, after a commit, that ``records`` are in the database."""
        for record in records:
            if record.session_id is not None:
                session = self._sessions.get(record.session_id)
                if session is not None:
                    session.committed(record.id)

    async def running_total(self, exchange: Exchange) -> Decimal | None:
        """The cost of the exchange's session including the exchange, when both are known."""
        if exchange.session_id is None or exchange.cost is None:
            return None
        self.note(exchange.session_id, exchange.id, exchange.cost.usd)
        return await self.total(exchange.session_id)

    async def total(self, session_id: str) -> Decimal | None:
        """The session's cost including every noted record; None when the database is slow.

        Only a session's first read waits for the database, and concurrent requests share
        one read; later refreshes run in the background while the last total serves.
        """
        session = self._session(session_id)
        stale = session.read_at is None or time.monotonic() - session.read_at >= self._refresh
        if stale and session.reading is None:
            session.reading = asyncio.create_task(self._reread(session_id, session))
            session.reading.add_done_callback(lambda _: _finished(session))
        if session.read_at is not None:
            return session.total()
        assert session.reading is not None
        try:
            await asyncio.wait_for(asyncio.shield(session.reading), self._timeout)
        except TimeoutError:
            return None
        except Exception:
            return None  # logged once by the reading task
        return session.total()

    async def close(self) -> None:
        """Stop the reads on their way, before the engine goes: none is left holding a
        connection."""
        reads = [s.reading for s in self._sessions.values() if s.reading is not None]
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.pop(session_id, None) or _Session()
        self._sessions[session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    async def _reread(self, session_id: str, session: _Session) -> None:
        now = time.monotonic()
        pending = session.pending
        for record_id in [r for r, (_, at) in pending.items() if now - at > MAX_PENDING_AGE]:
            session.forget(record_id)
        async with self._engine.connect() as connection:
            # Taken once the connection is ours: what the writer confirmed before this point
            # is committed before the statement below starts, so its snapshot holds it.
            asked = session.begin_read()
            try:
                rows = (await connection.execute(self._statement(session_id, asked))).all()
            except BaseException as exc:  # cancelled (shutdown) too: the state must be whole
                session.read_failed()
                if isinstance(exc, Exception):
                    # A header is a courtesy: a database problem must not fail the request.
                    log.warning("session cost of %r not read: %s", session_id, exc)
                raise
        stored = next((row[1] for row in rows if row[0] is None), None)
        stored_ids = [row[0] for row in rows if row[0] is not None]
        session.end_read(stored, stored_ids, now)

    def _statement(self, session_id: str, record_ids: list[str]) -> Any:
        # One statement, one snapshot: the total and the ids are read at the same instant.
        stored_total = select(null().label("id"), sessions.c.cost_usd).where(
            sessions.c.session_id == session_id
        )
        if not record_ids:
            return stored_total
        if self._postgres:
            # One array parameter: one statement text (and one prepared statement) whatever
            # the number of ids, where IN (...) made a new one for every count.
            matches = requests.c.id == any_(bindparam("ids", record_ids, type_=ARRAY(String)))
        else:
            matches = requests.c.id.in_(record_ids)
        unconfirmed = select(requests.c.id, literal(None, sessions.c.cost_usd.type)).where(matches)
        return union_all(stored_total, unconfirmed)


def _finished(session: _Session) -> None:
    task, session.reading = session.reading, None
    if task is not None and not task.cancelled():
        task.exception()  # retrieved: logged by the task itself
