"""Pruning old records, in batches, on SQLite and Postgres; session totals stay."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.prune import count_older, prune
from proxy.store.queries import UsageQueries
from proxy.store.tables import requests
from proxy.store.writer import write_records
from tests.store.factory import T0, make_record


async def _ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.execute(select(requests.c.id))).scalars())


async def test_prune_deletes_only_older_records_in_batches(
    engine: AsyncEngine, queries: UsageQueries
) -> None:
    old = [make_record(created_at=T0 - timedelta(days=100, minutes=i)) for i in range(23)]
    new = [make_record(created_at=T0 - timedelta(days=10, minutes=i)) for i in range(4)]
    edge = make_record(created_at=T0 - timedelta(days=90))
    await write_records(engine, [*old, *new, edge])
    session_before = await queries.get_session("s1")
    cutoff = T0 - timedelta(days=90)

    assert await count_older(engine, cutoff) == 23
    assert await prune(engine, cutoff, batch_size=5, dry_run=True) == 23
    assert len(await _ids(engine)) == 28

    assert await prune(engine, cutoff, batch_size=5) == 23
    assert await _ids(engine) == {r.id for r in [*new, edge]}
    assert await prune(engine, cutoff, batch_size=5) == 0
    # The session row is a summary of everything the session did: its totals do not shrink.
    # Its per-model breakdown is read from the records, so it covers what is left.
    session_after = await queries.get_session("s1")
    assert session_before is not None and session_after is not None
    assert session_after.pop("models") == {
        "gpt-4o-mini": {"requests": 5, "total_tokens": 75, "cost_usd": Decimal("0.0000125")}
    }
    assert session_before.pop("models")["gpt-4o-mini"]["requests"] == 28
    assert session_after == session_before
    assert session_after["requests"] == 28


async def test_prune_with_a_batch_that_divides_the_count(engine: AsyncEngine) -> None:
    await write_records(engine, [make_record(minutes=-i) for i in range(1, 11)])
    assert await prune(engine, T0, batch_size=5) == 10
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(requests))).scalar() == 0


async def test_prune_refuses_an_empty_batch(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        await prune(engine, T0, batch_size=0)


def test_prune_command(database_url: str, tmp_path: object) -> None:
    import asyncio

    from proxy.store.engine import create_engine
    from proxy.store.migrate import upgrade_database

    async def seed() -> None:
        engine = create_engine(database_url)
        try:
            await upgrade_database(engine)
            await write_records(engine, [make_record(minutes=i) for i in range(3)])
        finally:
            await engine.dispose()

    asyncio.run(seed())
    command = [sys.executable, "-m", "proxy", "prune", "--database-url", database_url]
    dry = subprocess.run(
        [*command, "--older-than", "1d", "--dry-run"], capture_output=True, text=True, check=True
    )
    assert "would delete 3 records created before" in dry.stdout
    done = subprocess.run(
        [*command, "--older-than", "2025-01-31T12:01:30Z"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "deleted 2 records created before 2025-01-31T12:01:30Z" in done.stdout
    assert "session totals are kept" in done.stdout
    refused = subprocess.run(
        [*command, "--older-than", "soon"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2
    assert "neither an ISO date/time nor an age" in refused.stderr
