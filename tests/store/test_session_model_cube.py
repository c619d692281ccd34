"""The ``session_model`` cube: migration 0017 sums the cells the writer makes, and a session
listing's per-model breakdown read from them equals the one summed from the records."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from alembic import command
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import alembic_config, upgrade_database
from proxy.store.queries import UsageQueries
from proxy.store.rows import write_records
from proxy.store.tables import rollup_state, rollups
from proxy.usage import Usage
from tests.store.factory import T0, make_record


def _records() -> list[Any]:
    usage = Usage(prompt_tokens=100, completion_tokens=20, total_tokens=120)
    return [
        *(make_record(minutes=m) for m in range(0, 120, 30)),
        # The next day, another model, one unpriced and one failed request.
        make_record(minutes=1500, model="gpt-4o", usage=usage, cost_usd=Decimal("0.0007")),
        make_record(minutes=1510, model="gpt-4o", cost_usd=None, status_code=500),
        # A model none of whose requests was priced: its cost is unknown, not zero.
        make_record(minutes=40, model="local-llama", cost_usd=None),
        make_record(minutes=50, session_id="s2", user_id="u2", model=None),
        make_record(minutes=55, session_id=None),
    ]


async def _cells(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    c = rollups.c
    query = (
        select(c.bucket_start, c.cell, c.session_id, c.model, c.requests, c.total_tokens,
               c.unpriced_requests, c.error_requests, c.tool_calls, c.cost_usd, c.latency_ms_sum)
        .where(c.cube == "session_model")
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
        # s1: two models on the first day, one the next; s2 (no model); no session.
        assert {(row[2], row[3], row[4]) for row in written} == {
            ("s1", "gpt-4o-mini", 4), ("s1", "local-llama", 1), ("s1", "gpt-4o", 2),
            ("s2", None, 1), (None, "gpt-4o-mini", 1),
        }  # fmt: skip
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0012"))
            await connection.commit()
        assert await _cells(engine) == []
        await upgrade_database(engine)
        assert await _cells(engine) == written
    finally:
        await engine.dispose()


async def test_listing_breakdown_from_cells_equals_the_records(engine: AsyncEngine) -> None:
    await write_records(engine, _records())
    from_cells, _ = await UsageQueries(engine).list_sessions(since=T0 - timedelta(days=1))
    from_rows, _ = await UsageQueries(engine, use_rollups=False).list_sessions(
        since=T0 - timedelta(days=1)
    )
    assert [s["models"] for s in from_cells] == [s["models"] for s in from_rows]
    s1 = next(s for s in from_cells if s["session_id"] == "s1")
    assert s1["models"] == {
        "gpt-4o-mini": {"requests": 4, "total_tokens": 60, "cost_usd": Decimal("0.00001")},
        "gpt-4o": {"requests": 2, "total_tokens": 135, "cost_usd": Decimal("0.0007")},
        "local-llama": {"requests": 1, "total_tokens": 15, "cost_usd": None},
    }
    assert next(s for s in from_cells if s["session_id"] == "s2")["models"] == {
        "unknown": {"requests": 1, "total_tokens": 15, "cost_usd": Decimal("0.0000025")}
    }


async def test_incomplete_rollups_leave_the_breakdown_to_the_records(engine: AsyncEngine) -> None:
    await write_records(engine, _records())
    async with engine.begin() as connection:
        # Rows imported by SQL are in no cell until a rebuild: the records must answer.
        await connection.execute(update(rollup_state).values(complete=False))
        await connection.execute(rollups.delete().where(rollups.c.cube == "session_model"))
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None
    assert session["models"]["gpt-4o-mini"]["requests"] == 4
