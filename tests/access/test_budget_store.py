"""Budgets in the database: atomic holds, settlement from records, period reset, expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.errors import BudgetExceeded
from proxy.spend.budget import Budget, Hold, budget_of
from proxy.spend.periods import TOTAL_START, period_end, period_start
from proxy.store.budgets import RESERVATION_TTL, BudgetStore
from proxy.store.rows import write_records
from proxy.usage import Usage
from tests.store.factory import make_record

T = datetime(2026, 11, 23, 10, 59, 30, tzinfo=UTC)


async def _budget(store: BudgetStore, **fields: object) -> Budget:
    values: dict[str, object] = {
        "name": "team",
        "scope": "user",
        "subject": "alice",
        "period": "hour",
        "limit_usd": None,
        "limit_tokens": None,
    }
    values.update(fields)
    return budget_of(await store.create(**values))  # type: ignore[arg-type]


def test_periods() -> None:
    assert period_start("hour", T) == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert period_start("day", T) == datetime(2026, 11, 23, tzinfo=UTC)
    assert period_start("month", T) == datetime(2026, 11, 1, tzinfo=UTC)
    assert period_start("total", T) == TOTAL_START
    assert period_end("month", datetime(2026, 12, 1, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert period_end("total", TOTAL_START) is None


async def test_holds_stop_at_the_limit_and_the_next_period_starts_afresh(
    engine: AsyncEngine,
) -> None:
    store = BudgetStore(engine)
    budget = await _budget(store, limit_tokens=100)
    await store.reserve("r1", [budget], Hold(Decimal(0), 60), T)
    with pytest.raises(BudgetExceeded, match=r"budget 'team' \(100 tokens per hour") as refused:
        await store.reserve("r2", [budget], Hold(Decimal(0), 60), T)
    assert "60 tokens spent or reserved" in refused.value.message
    assert "resets at 2026-11-23T11:00:00Z" in refused.value.message
    await store.reserve("r3", [budget], Hold(Decimal(0), 40), T)  # exactly fits
    with pytest.raises(BudgetExceeded):
        await store.reserve("r4", [budget], Hold(Decimal(0), 0), T)  # nothing left at all
    # One minute later is the next hour: the budget is whole again.
    await store.reserve("r5", [budget], Hold(Decimal(0), 100), T + timedelta(minutes=1))
    [status] = await store.status(T)
    assert (status["reserved_tokens"], status["spent_tokens"]) == (100, 0)


async def test_a_refused_budget_rolls_back_holds_on_the_others(engine: AsyncEngine) -> None:
    store = BudgetStore(engine)
    roomy = await _budget(store, name="roomy", limit_usd=Decimal(100))
    tight = await _budget(store, name="tight", limit_usd=Decimal("0.01"))
    with pytest.raises(BudgetExceeded, match="'tight'"):
        await store.reserve("r1", [roomy, tight], Hold(Decimal("0.02"), 5), T)
    assert {s["name"]: s["reserved_usd"] for s in await store.status(T)} == {
        "roomy": Decimal(0),
        "tight": Decimal(0),
    }


async def test_concurrent_holds_never_exceed_the_limit(engine: AsyncEngine) -> None:
    store = BudgetStore(engine)
    budget = await _budget(store, limit_usd=Decimal("1.00"))

    async def attempt(i: int) -> bool:
        try:
            await store.reserve(f"r{i}", [budget], Hold(Decimal("0.30"), 1), T)
        except BudgetExceeded:
            return False
        return True

    admitted = await asyncio.gather(*(attempt(i) for i in range(12)))
    assert sum(admitted) == 3
    [status] = await store.status(T)
    assert status["reserved_usd"] == Decimal("0.90")


async def test_settlement_replaces_the_hold_with_the_real_cost_once(engine: AsyncEngine) -> None:
    store = BudgetStore(engine)
    budget = await _budget(store, limit_usd=Decimal(1))
    other = await _budget(store, name="bob", subject="bob", limit_usd=Decimal(1))
    everyone = await _budget(store, name="all", scope="global", subject=None, limit_tokens=10**6)
    record = make_record(
        created_at=T,
        user_id="alice",
        cost_usd=Decimal("0.25"),
        usage=Usage(prompt_tokens=30, completion_tokens=12, total_tokens=42),
    )
    await store.reserve(record.id, [budget, everyone], Hold(Decimal("0.40"), 60), T)
    assert await write_records(engine, [record]) == 1
    assert await write_records(engine, [record]) == 0  # a replay counts nothing twice
    status = {s["id"]: s for s in await store.status(T)}
    assert status[budget.id]["spent_usd"] == Decimal("0.25")
    assert status[budget.id]["reserved_usd"] == Decimal(0)
    assert status[everyone.id]["spent_tokens"] == 42
    assert status[everyone.id]["reserved_tokens"] == 0
    assert status[other.id]["spent_usd"] == Decimal(0)


async def test_stale_holds_expire(engine: AsyncEngine) -> None:
    store = BudgetStore(engine)
    budget = await _budget(store, limit_tokens=100)
    await store.reserve("lost", [budget], Hold(Decimal(0), 100), T)
    assert await store.release_expired(T + RESERVATION_TTL - timedelta(seconds=1)) == 0
    assert await store.release_expired(T + RESERVATION_TTL + timedelta(seconds=1)) == 1
    await store.reserve("next", [budget], Hold(Decimal(0), 100), T)
