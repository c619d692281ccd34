"""The ``upstream_model`` cube (writer and migration 0014 agree), local totals read from it,
and stored comparisons with their one-replica claims."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from alembic import command
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import alembic_config, upgrade_database
from proxy.store.reconciliations import ReconciliationStore, local_cells
from proxy.store.rows import write_records
from proxy.store.tables import rollups
from tests.store.factory import T0, make_record

ANTHROPIC = "https://api.anthropic.com/v1"


def _records() -> list[Any]:
    records = [make_record(minutes=m) for m in range(0, 180, 20)]
    records += [make_record(minutes=5, model="claude-sonnet-4-0", upstream=ANTHROPIC)]
    records += [make_record(minutes=1500, status_code=500, cost_usd=None)]
    records += [make_record(minutes=65, cost_usd=Decimal("0.25"))]
    return records


async def _cells(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    c = rollups.c
    query = (
        select(c.grain, c.bucket_start, c.cell, c.upstream, c.model, c.requests, c.prompt_tokens,
               c.error_requests, c.unpriced_requests, c.cost_usd, c.latency_ms_sum)
        .where(c.cube == "upstream_model")
        .order_by(c.grain, c.bucket_start, c.cell)
    )  # fmt: skip
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(query)]


async def test_migration_sums_the_cells_the_writer_makes(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        await write_records(engine, _records())
        written = await _cells(engine)
        assert len(written) == 5 + 3  # hours: 3 + 1 (Anthropic) + 1 (a day later); days: 3
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0011"))
            await connection.commit()
        assert await _cells(engine) == []
        await upgrade_database(engine)
        assert await _cells(engine) == written
    finally:
        await engine.dispose()


async def test_local_cells_of_a_providers_upstreams(engine: AsyncEngine) -> None:
    await write_records(engine, _records())
    day = T0.replace(hour=0)
    cells = await local_cells(
        engine, ["https://api.openai.com/v1"], day, day + timedelta(days=1), "day"
    )
    assert [(c["model"], c["requests"]) for c in cells] == [("gpt-4o-mini", 10)]
    hours = await local_cells(engine, [ANTHROPIC], T0, T0 + timedelta(hours=1), "hour")
    assert [(c["model"], c["requests"]) for c in hours] == [("claude-sonnet-4-0", 1)]


def _stored(start: Any, pct: float) -> dict[str, Any]:
    return {
        "provider": "openai",
        "bucket_width": "1d",
        "bucket_start": start,
        "bucket_end": start + timedelta(days=1),
        "final": True,
        "computed_at": T0,
        "measure": "cost_usd",
        "difference_pct": pct,
        "billed_cost_usd": Decimal("1.5"),
        "metered_cost_usd": Decimal("1.2"),
        "unpriced_requests": 0,
        "bypass": False,
        "comparison": {"rows": []},
    }


async def test_comparisons_replace_and_alerts_are_claimed_once(engine: AsyncEngine) -> None:
    store = ReconciliationStore(engine)
    day = T0.replace(hour=0)
    await store.save([_stored(day, 20.0), _stored(day + timedelta(days=1), 1.0)])
    assert await store.claim_alert("openai", "1d", day, T0)
    assert not await store.claim_alert("openai", "1d", day, T0)
    await store.save([_stored(day, 25.0)])  # compared again: the claim stays
    assert not await store.claim_alert("openai", "1d", day, T0)
    rows = await store.stored("openai", "1d", day, day + timedelta(days=5))
    assert [r["difference_pct"] for r in rows] == [25.0, 1.0]
    assert rows[0]["billed_cost_usd"] == Decimal("1.5") and rows[0]["alerted_at"] is not None


async def test_one_caller_runs_each_round(engine: AsyncEngine) -> None:
    store = ReconciliationStore(engine)
    hour = timedelta(hours=1)
    assert await store.claim_run("openai", T0, hour)
    assert not await store.claim_run("openai", T0 + timedelta(minutes=5), hour)
    assert await store.claim_run("anthropic", T0, hour)
    assert await store.claim_run("openai", T0 + hour, hour)
    await store.finish_run("openai", T0 + hour, "openai: GET /v1/organization/costs: HTTP 500")
