"""``reprice`` and ``prune`` keep the rollups in step with the records they change."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.pricing import Cost
from proxy.store.prune import prune
from proxy.store.reprice import reprice
from proxy.store.rows import write_records
from proxy.store.tables import requests
from proxy.usage import Usage
from tests.store.factory import T0, make_record
from tests.store.rollup_truth import (
    assert_rollups_match_raw_rows,
    assert_same_cells,
    computed_cells,
    stored_cells,
)


def _new_price(model: str | None, upstream: str, usage: Usage, at: datetime) -> Cost | None:
    """Another price list: gpt-4o loses its price, the unknown model gets one."""
    if model == "gpt-4o-2024":
        return None
    return Cost(Decimal("0.000003") * usage.total_tokens, "config", "v2", model or "?")


async def test_after_a_reprice_the_rollups_are_what_the_records_sum_to(
    engine: AsyncEngine,
) -> None:
    records = [
        make_record(
            minutes=7 * n,
            response_model=["gpt-4o-2024", "gpt-4o-mini-2024", "unknown-model"][n % 3],
            cost_usd=None if n % 3 == 2 else Decimal("0.000001") * n,
            user_id=f"u{n % 4}",
            properties={"env": "prod"} if n % 2 else {},
            session_id=f"s{n % 5}",
        )
        for n in range(90)
    ]
    await write_records(engine, records)
    before = await stored_cells(engine)
    report = await reprice(engine, _new_price, since=T0 - timedelta(days=1))
    assert report.changed == 90
    await assert_rollups_match_raw_rows(engine)
    after = await stored_cells(engine)
    assert after.keys() == before.keys()  # the same cells, with other costs
    totals = [key for key, cell in after.items() if cell["cube"] == "total"]
    assert all(after[k]["cost_usd"] != before[k]["cost_usd"] for k in totals)
    async with engine.connect() as connection:
        unpriced = await connection.scalar(
            select(func.count()).select_from(requests).where(requests.c.cost_usd.is_(None))
        )
    assert unpriced == sum(after[k]["unpriced_requests"] for k in totals if k[1] == "hour") == 30


async def test_pruned_records_keep_their_totals_in_the_rollups(engine: AsyncEngine) -> None:
    old = [make_record(created_at=T0 - timedelta(days=40, minutes=n)) for n in range(20)]
    recent = [make_record(minutes=n, user_id="u2") for n in range(10)]
    await write_records(engine, [*old, *recent])
    everything = await computed_cells(engine)
    assert await prune(engine, T0 - timedelta(days=30)) == 20
    assert_same_cells(await stored_cells(engine), everything)
    assert (await computed_cells(engine)).keys() != everything.keys()  # the rows are gone
