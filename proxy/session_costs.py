"""A session's running cost for the caller, at once: stored total plus what is not stored yet.

The database holds the session total of every record the writers have stored. Records of
this process still on their way (queued, in a batch, in the spool) are kept here by id until
the database shows them. One statement reads both the stored total and which of those ids are
stored, so a batch committed meanwhile is counted exactly once.

The database is read once per session per ``refresh`` seconds, not per request: between
reads, the stored total read last plus this process's records since is exact for this
process. Records of other replicas show up at the next read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import literal, null, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import Exchange
from proxy.store.tables import requests, sessions
from proxy.store.types import EXACT

log = logging.getLogger(__name__)

MAX_SESSIONS = 10_000
MAX_PENDING_AGE = 900.0
"""Seconds after which an unseen record is forgotten (the database was down that long)."""


@dataclass
class _Session:
    stored: Decimal | None = None
    read_at: float | None = None
    # record id -> (cost, when noted): this process's records not seen stored at the last read.
    pending: dict[str, tuple[Decimal, float]] = field(default_factory=dict)
    # Their sum, kept as they come and go: summing them per request was quadratic in a busy
    # session (20,000 records between two reads at 4,000 requests/s).
    pending_total: Decimal = Decimal(0)
    reading: asyncio.Task[None] | None = None

    def total(self) -> Decimal:
        return EXACT.add(self.stored or Decimal(0), self.pending_total)

    def add_pending(self, record_id: str, cost: Decimal) -> None:
        self.forget(record_id)
        self.pending[record_id] = (cost, time.monotonic())
        self.pending_total = EXACT.add(self.pending_total, cost)

    def forget(self, record_id: str) -> None:
        entry = self.pending.pop(record_id, None)
        if entry is not None:
            self.pending_total = EXACT.subtract(self.pending_total, entry[0])


class SessionCosts:
    """Running session totals for ``X-Tally-Session-Cost-USD`` and the stream's tally."""

    def __init__(self, engine: AsyncEngine, timeout: float = 0.25, refresh: float = 5.0) -> None:
        self._engine = engine
        self._timeout = timeout
        self._refresh = refresh
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first

    def note(self, session_id: str, record_id: str, cost: Decimal) -> None:
        """Remember a priced record of the session that the database may not have yet."""
        self._session(session_id).add_pending(record_id, cost)

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
        waiting = list(pending)
        try:
            stored_total, stored_ids = await self._read(session_id, waiting)
        except Exception as exc:
            # A header is a courtesy: a database problem must not fail the request.
            log.warning("session cost of %r not read: %s", session_id, exc)
            raise
        for record_id in stored_ids:
            session.forget(record_id)
        session.stored = stored_total
        session.read_at = now

    async def _read(
        self, session_id: str, record_ids: list[str]
    ) -> tuple[Decimal | None, set[str]]:
        # One statement, one snapshot: the total and the ids are read at the same instant.
        stored_total = select(null().label("id"), sessions.c.cost_usd).where(
            sessions.c.session_id == session_id
        )
        statement = stored_total
        if record_ids:
            stored_ids = select(requests.c.id, literal(None, sessions.c.cost_usd.type)).where(
                requests.c.id.in_(record_ids)
            )
            statement = union_all(stored_total, stored_ids)  # type: ignore[assignment]
        async with self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        total = next((row[1] for row in rows if row[0] is None), None)
        return total, {row[0] for row in rows if row[0] is not None}


def _finished(session: _Session) -> None:
    task, session.reading = session.reading, None
    if task is not None and not task.cancelled():
        task.exception()  # retrieved: logged by the task itself
