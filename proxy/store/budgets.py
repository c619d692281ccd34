"""The SQL of budgets: definitions, atomic reservations, settlement and status.

A reservation is one transaction: per budget (in id order, so concurrent requests lock rows
in the same order) make sure the period's ``budget_spend`` row exists, then add the hold
with a single conditional ``UPDATE``: it only matches while spent + reserved + hold stays
within the limit. On Postgres the row lock and the re-checked condition serialise
concurrent requests across replicas; on SQLite one writer at a time does. A budget the hold
does not fit rolls the whole reservation back.

Settlement runs in the record writer's transaction for rows actually inserted, so replays
never count twice: the reservations of those requests are deleted (returning what they
held) and the real cost and tokens are added to every budget the record counts against.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.errors import BudgetExceeded, InvalidRequest
from proxy.money import format_usd
from proxy.spend.actions import Action, actions_json
from proxy.spend.budget import Amount, Budget, Hold, Slot, budget_of
from proxy.spend.forecast import NO_BURN, Burn
from proxy.spend.periods import Period, period_end, period_start
from proxy.store.tables import (
    budget_alerts,
    budget_burn,
    budget_reservations,
    budget_spend,
    budgets,
)
from proxy.store.types import EXACT, MAX_BIGINT, Money, max_money

RESERVATION_TTL = timedelta(minutes=15)
BURN_BUCKET = timedelta(minutes=5)
BURN_KEPT = timedelta(days=2)
ZERO = Decimal(0)


class _Refused(Exception):
    def __init__(self, budget: Budget) -> None:
        self.budget = budget


class BudgetStore:
    """Budgets in the ``budgets``, ``budget_spend`` and ``budget_reservations`` tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def definitions(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as connection:
            result = await connection.execute(select(budgets).order_by(budgets.c.id))
            return [dict(row) for row in result.mappings()]

    async def create(
        self,
        *,
        name: str,
        scope: str,
        subject: str | None,
        period: Period,
        limit_usd: Decimal | None,
        limit_tokens: int | None,
        alerts: Sequence[int] = (),
        actions: Sequence[Action] = (),
    ) -> dict[str, Any]:
        """Define a budget; ``InvalidRequest`` names a limit the database cannot hold."""
        self.check_limits(limit_usd, limit_tokens)
        row = {
            "id": secrets.token_hex(8),
            "name": name,
            "scope": scope,
            "subject": None if scope == "global" else subject,
            "period": period,
            "limit_usd": limit_usd,
            "limit_tokens": limit_tokens,
            "alerts": sorted(set(alerts)),
            "actions": actions_json(actions) or None,
            "created_at": datetime.now(UTC),
        }
        async with self._engine.begin() as connection:
            await connection.execute(budgets.insert().values(**row))
        return row

    def check_limits(self, limit_usd: Decimal | None, limit_tokens: int | None) -> None:
        """Raise ``InvalidRequest`` (naming ``usd`` or ``tokens``) for a limit out of range."""
        most = max_money(self._engine.dialect.name)
        if limit_usd is not None and not (limit_usd.is_finite() and 0 < limit_usd <= most):
            raise InvalidRequest(
                f"usd must be above 0 and at most {format_usd(most)} on this database",
                param="usd",
            )
        if limit_tokens is not None and not 0 < limit_tokens <= MAX_BIGINT:
            raise InvalidRequest(f"tokens must be above 0 and at most {MAX_BIGINT}", param="tokens")

    async def delete(self, budget_id: str) -> bool:
        async with self._engine.begin() as connection:
            result = await connection.execute(delete(budgets).where(budgets.c.id == budget_id))
            await connection.execute(
                delete(budget_spend).where(budget_spend.c.budget_id == budget_id)
            )
            await connection.execute(
                delete(budget_reservations).where(budget_reservations.c.budget_id == budget_id)
            )
            await connection.execute(
                delete(budget_burn).where(budget_burn.c.budget_id == budget_id)
            )
        return bool(result.rowcount)

    async def reserve(
        self, request_id: str, matching: Sequence[Budget], hold: Hold, at: datetime
    ) -> None:
        """Hold ``hold`` on every budget of ``matching`` or on none; raise ``BudgetExceeded``."""
        try:
            async with self._engine.begin() as connection:
                await self._hold_all(connection, request_id, matching, hold, at)
        except _Refused as refused:
            raise BudgetExceeded(await self._refusal(refused.budget, hold, at)) from None

    async def _hold_all(
        self,
        connection: AsyncConnection,
        request_id: str,
        matching: Sequence[Budget],
        hold: Hold,
        at: datetime,
    ) -> None:
        for budget in sorted(matching, key=lambda b: b.id):
            start = period_start(budget.period, at)
            await _ensure_spend_row(connection, budget.id, start)
            if not await _hold(connection, budget, start, hold):
                raise _Refused(budget)  # rolls back the holds made so far
            await connection.execute(
                budget_reservations.insert().values(
                    request_id=request_id,
                    budget_id=budget.id,
                    period_start=start,
                    usd=hold.usd,
                    tokens=hold.tokens,
                    expires_at=at + RESERVATION_TTL,
                )
            )

    async def _refusal(self, budget: Budget, hold: Hold, at: datetime) -> str:
        start = period_start(budget.period, at)
        spend = await self._spend(budget.id, start)
        end = period_end(budget.period, start)
        resets = f"; it resets at {end.isoformat().replace('+00:00', 'Z')}" if end else ""
        used = (
            f"{format_usd(spend['spent_usd'] + spend['reserved_usd'])} USD"
            if budget.limit_usd is not None
            else f"{spend['spent_tokens'] + spend['reserved_tokens']} tokens"
        )
        wanted = (
            f"{format_usd(hold.usd)} USD"
            if budget.limit_usd is not None
            else f"{hold.tokens} tokens"
        )
        return (
            f"{budget.describe()} would be exceeded: {used} spent or reserved, this request "
            f"reserves {wanted}{resets}"
        )

    async def _spend(self, budget_id: str, start: datetime) -> dict[str, Any]:
        query = select(budget_spend).where(
            budget_spend.c.budget_id == budget_id, budget_spend.c.period_start == start
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        if row is None:
            return {
                "spent_usd": ZERO,
                "spent_tokens": 0,
                "reserved_usd": ZERO,
                "reserved_tokens": 0,
            }
        return dict(row)

    async def usage(self, defined: Sequence[Budget], at: datetime) -> dict[Slot, Amount]:
        """Spent plus reserved in each budget's period holding ``at``: what a replica
        decides from while the database is unavailable (``proxy.access.outage``)."""
        if not defined:
            return {}
        slots = {budget.id: (budget.id, period_start(budget.period, at)) for budget in defined}
        c = budget_spend.c
        query = select(
            c.budget_id, c.spent_usd, c.reserved_usd, c.spent_tokens, c.reserved_tokens
        ).where(or_(*(and_(c.budget_id == i, c.period_start == s) for i, s in slots.values())))
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {
            slots[row.budget_id]: Amount(
                EXACT.add(row.spent_usd, row.reserved_usd), row.spent_tokens + row.reserved_tokens
            )
            for row in rows
        }

    async def status(self, at: datetime, subject_key: str | None = None) -> list[dict[str, Any]]:
        """Each budget (only the key's own with ``subject_key``) with its current period."""
        result = []
        rows = [
            row
            for row in await self.definitions()
            if subject_key is None or (row["scope"] == "key" and row["subject"] == subject_key)
        ]
        burns = await self.burn([row["id"] for row in rows], at)
        for row in rows:
            budget = budget_of(row)
            start = period_start(budget.period, at)
            spend = await self._spend(budget.id, start)
            result.append({**row, **spend, "period_start": start,
                           "resets_at": period_end(budget.period, start),
                           "burn": burns.get(budget.id, NO_BURN)})  # fmt: skip
        return result

    async def burn(self, budget_ids: Sequence[str], at: datetime) -> dict[str, Burn]:
        """What stored records spent on each budget in the hour and the day before ``at``."""
        if not budget_ids:
            return {}
        c = budget_burn.c
        sums: dict[str, list[Any]] = {}
        async with self._engine.connect() as connection:
            for n, since in enumerate((at - timedelta(hours=1), at - timedelta(days=1))):
                query = (
                    select(c.budget_id, func.sum(c.usd), func.sum(c.tokens))
                    .where(c.budget_id.in_(budget_ids), c.bucket_start > since - BURN_BUCKET)
                    .group_by(c.budget_id)
                )
                for budget_id, usd, tokens in (await connection.execute(query)).all():
                    found = sums.setdefault(budget_id, [ZERO, 0, ZERO, 0])
                    found[2 * n], found[2 * n + 1] = usd or ZERO, int(tokens or 0)
        return {budget_id: Burn(*found) for budget_id, found in sums.items()}

    async def claim_alert(self, budget_id: str, start: datetime, threshold: int) -> bool:
        """True for the one caller, across replicas, that records this alert first."""
        row = {
            "budget_id": budget_id,
            "period_start": start,
            "threshold": threshold,
            "fired_at": datetime.now(UTC),
        }
        async with self._engine.begin() as connection:
            statement = (
                _insert(connection, budget_alerts)
                .on_conflict_do_nothing(
                    index_elements=[
                        budget_alerts.c.budget_id,
                        budget_alerts.c.period_start,
                        budget_alerts.c.threshold,
                    ]
                )
                .returning(budget_alerts.c.threshold)
            )
            return (await connection.execute(statement, row)).first() is not None

    async def mark_delivered(self, budget_id: str, start: datetime, threshold: int) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                budget_alerts.update()
                .where(
                    budget_alerts.c.budget_id == budget_id,
                    budget_alerts.c.period_start == start,
                    budget_alerts.c.threshold == threshold,
                )
                .values(delivered_at=datetime.now(UTC))
            )

    async def release_expired(self, now: datetime) -> int:
        """Release reservations whose record never came; returns how many."""
        async with self._engine.begin() as connection:
            released = await connection.execute(
                delete(budget_reservations)
                .where(budget_reservations.c.expires_at < now)
                .returning(*_HELD)
            )
            rows = [dict(row) for row in released.mappings()]
            await _apply(connection, _released(rows))
            await connection.execute(
                delete(budget_burn).where(budget_burn.c.bucket_start < now - BURN_KEPT)
            )
        return len(rows)


_HELD = (
    budget_reservations.c.budget_id,
    budget_reservations.c.period_start,
    budget_reservations.c.usd,
    budget_reservations.c.tokens,
)


def _insert(connection: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def _ensure_spend_row(connection: AsyncConnection, budget_id: str, start: datetime) -> None:
    statement = _insert(connection, budget_spend).on_conflict_do_nothing(
        index_elements=[budget_spend.c.budget_id, budget_spend.c.period_start]
    )
    await connection.execute(
        statement,
        {
            "budget_id": budget_id,
            "period_start": start,
            "spent_usd": ZERO,
            "spent_tokens": 0,
            "reserved_usd": ZERO,
            "reserved_tokens": 0,
        },
    )


async def _hold(connection: AsyncConnection, budget: Budget, start: datetime, hold: Hold) -> bool:
    """Add the hold if it fits; True when it did. One statement: atomic under concurrency."""
    c = budget_spend.c
    conditions = [c.budget_id == budget.id, c.period_start == start]
    if budget.limit_usd is not None:
        limit = bindparam("limit_usd", budget.limit_usd, type_=Money())
        used = c.spent_usd + c.reserved_usd
        conditions += [used < limit, used + bindparam("hold_usd", hold.usd, type_=Money()) <= limit]
    if budget.limit_tokens is not None:
        used_tokens = c.spent_tokens + c.reserved_tokens
        conditions += [
            used_tokens < budget.limit_tokens,
            used_tokens + hold.tokens <= budget.limit_tokens,
        ]
    statement = (
        budget_spend.update()
        .where(and_(*conditions))
        .values(
            reserved_usd=c.reserved_usd + bindparam("add_usd", hold.usd, type_=Money()),
            reserved_tokens=c.reserved_tokens + hold.tokens,
        )
        .returning(c.budget_id)
    )
    return (await connection.execute(statement)).first() is not None


Deltas = dict[tuple[str, datetime], list[Any]]
"""(budget id, period start) -> [spent usd, spent tokens, reserved usd, reserved tokens]."""


def _released(rows: Iterable[dict[str, Any]]) -> Deltas:
    deltas: Deltas = {}
    for row in rows:
        delta = deltas.setdefault((row["budget_id"], row["period_start"]), [ZERO, 0, ZERO, 0])
        delta[2] = EXACT.subtract(delta[2], row["usd"])
        delta[3] -= row["tokens"]
    return deltas


async def _apply(connection: AsyncConnection, deltas: Deltas) -> None:
    """Add the deltas to the spend rows, in a fixed order (no deadlocks between replicas)."""
    if not deltas:
        return
    rows = [
        {
            "budget_id": budget_id,
            "period_start": start,
            "spent_usd": d[0],
            "spent_tokens": d[1],
            "reserved_usd": d[2],
            "reserved_tokens": d[3],
        }
        for (budget_id, start), d in sorted(deltas.items())
    ]
    statement = _insert(connection, budget_spend)
    new, old = statement.excluded, budget_spend.c
    names = ("spent_usd", "spent_tokens", "reserved_usd", "reserved_tokens")
    statement = statement.on_conflict_do_update(
        index_elements=[old.budget_id, old.period_start],
        set_={name: old[name] + new[name] for name in names},
    )
    await connection.execute(statement, rows)


async def settle(connection: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Count newly inserted request rows against their budgets and release their holds.

    Called by ``write_records`` in its transaction, with the rows it actually inserted.
    """
    if not rows:
        return
    defined = [
        budget_of(dict(row)) for row in (await connection.execute(select(budgets))).mappings()
    ]
    if not defined:
        # Nothing to count against, and nothing held: a request is only reserved against
        # budgets defined before it was sent, and deleting a budget deletes its holds.
        return
    released = await connection.execute(
        delete(budget_reservations)
        .where(budget_reservations.c.request_id.in_([row["id"] for row in rows]))
        .returning(*_HELD)
    )
    deltas = _released(dict(row) for row in released.mappings())
    burned: dict[tuple[str, datetime], list[Any]] = {}
    for row in rows:
        for budget in defined:
            if not budget.applies(row["key_id"], row["user_id"], row["session_id"]):
                continue
            start = period_start(budget.period, row["created_at"])
            delta = deltas.setdefault((budget.id, start), [ZERO, 0, ZERO, 0])
            burn = burned.setdefault((budget.id, _bucket(row["created_at"])), [ZERO, 0])
            if row["cost_usd"] is not None:
                delta[0] = EXACT.add(delta[0], row["cost_usd"])
                burn[0] = EXACT.add(burn[0], row["cost_usd"])
            delta[1] += row["total_tokens"] or 0
            burn[1] += row["total_tokens"] or 0
    await _apply(connection, deltas)
    await _burn(connection, burned)


def _bucket(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % 5, second=0, microsecond=0)


async def _burn(connection: AsyncConnection, burned: dict[tuple[str, datetime], list[Any]]) -> None:
    if not burned:
        return
    rows = [
        {"budget_id": budget_id, "bucket_start": start, "usd": usd, "tokens": tokens}
        for (budget_id, start), (usd, tokens) in sorted(burned.items())
    ]
    statement = _insert(connection, budget_burn)
    new, old = statement.excluded, budget_burn.c
    statement = statement.on_conflict_do_update(
        index_elements=[old.budget_id, old.bucket_start],
        set_={"usd": old.usd + new.usd, "tokens": old.tokens + new.tokens},
    )
    await connection.execute(statement, rows)
