"""A session's running cost for the caller, at once: stored total plus what is not stored yet.

The database holds the session total of every record the writers have stored. Records of
this process still on their way (queued, in a batch, in the spool) are kept here by id until
the database shows them. One statement reads both the stored total and which of those ids are
stored, so a batch committed meanwhile is counted exactly once. Records of other replicas not
stored yet (at most a flush interval's worth) are not seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
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


class SessionCosts:
    """Running session totals for ``X-Tally-Session-Cost-USD`` and the stream's tally."""

    def __init__(self, engine: AsyncEngine, timeout: float = 0.25) -> None:
        self._engine = engine
        self._timeout = timeout
        # session id -> record id -> (cost, when noted); least recently used session first.
        self._pending: OrderedDict[str, dict[str, tuple[Decimal, float]]] = OrderedDict()

    def note(self, session_id: str, record_id: str, cost: Decimal) -> None:
        """Remember a priced record of the session that the database may not have yet."""
        records = self._pending.pop(session_id, None) or {}
        records[record_id] = (cost, time.monotonic())
        self._pending[session_id] = records
        while len(self._pending) > MAX_SESSIONS:
            self._pending.popitem(last=False)

    async def running_total(self, exchange: Exchange) -> Decimal | None:
        """The cost of the exchange's session including the exchange, when both are known."""
        if exchange.session_id is None or exchange.cost is None:
            return None
        self.note(exchange.session_id, exchange.id, exchange.cost.usd)
        return await self.total(exchange.session_id)

    async def total(self, session_id: str) -> Decimal | None:
        """The session's cost including every noted record; None when the database is slow."""
        try:
            return await asyncio.wait_for(self._total(session_id), self._timeout)
        except TimeoutError:
            log.warning("session cost of %r not read within %.2fs", session_id, self._timeout)
        except Exception as exc:
            # A header is a courtesy: a database problem must not fail the request.
            log.warning("session cost of %r not read: %s", session_id, exc)
        return None

    async def _total(self, session_id: str) -> Decimal:
        records = self._pending.get(session_id, {})
        now = time.monotonic()
        for record_id in [r for r, (_, at) in records.items() if now - at > MAX_PENDING_AGE]:
            del records[record_id]
        waiting = list(records)
        stored_total, stored_ids = await self._read(session_id, waiting)
        total = stored_total or Decimal(0)
        for record_id in waiting:
            entry = records.get(record_id)
            if entry is None:
                continue
            if record_id in stored_ids:
                del records[record_id]
            else:
                total = EXACT.add(total, entry[0])
        if not records:
            self._pending.pop(session_id, None)
        return total

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
