"""Pruning old records, in batches, on SQLite and Postgres; session totals stay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.partitions import ensure_partitions, partitions
from proxy.store.prune import count_older, prune
from proxy.store.queries import UsageQueries
from proxy.store.tables import requests
from proxy.store.writer import write_records
from tests.resilience.load import until
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
    # The session row is a summary of everything the session did: its totals do not shrink,
    # nor does its per-model breakdown, read from the rollups that keep the pruned totals.
    session_after = await queries.get_session("s1")
    assert session_before is not None and session_after is not None
    assert session_after["models"] == {
        "gpt-4o-mini": {"requests": 28, "total_tokens": 420, "cost_usd": Decimal("0.00007")}
    }
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


async def _placement(engine: AsyncEngine) -> dict[str, int]:
    query = sa.text("SELECT tableoid::regclass::text, count(*) FROM requests GROUP BY 1")
    async with engine.connect() as connection:
        return dict((await connection.execute(query)).all())  # type: ignore[arg-type]


async def _totals(engine: AsyncEngine) -> tuple[object, ...]:
    async with engine.connect() as connection:
        sessions = (await connection.execute(sa.text("SELECT * FROM sessions"))).all()
        rolled = (
            await connection.execute(
                sa.text(
                    "SELECT cube, grain, sum(requests), sum(total_tokens) FROM rollups "
                    "GROUP BY 1, 2 ORDER BY 1, 2"
                )
            )
        ).all()
    return tuple(sessions), tuple(rolled)


def _on(day: date, *hours: float) -> list[RequestRecord]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return [make_record(created_at=start + timedelta(hours=h)) for h in hours]


D = date(2025, 1, 31)


@pytest.mark.postgres
async def test_prune_drops_old_partitions_and_deletes_the_rest(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    await ensure_partitions(engine, D - timedelta(days=3), D)
    older = [*_on(D - timedelta(days=3), 1, 2, 3), *_on(D - timedelta(days=2), 0, 5, 9, 23.99)]
    straddling_old, straddling_new = (
        _on(D - timedelta(days=1), 1, 11.9),
        _on(D - timedelta(days=1), 12, 20),
    )
    in_default_old, in_default_new = (
        _on(D - timedelta(days=10), 4, 5),
        _on(D + timedelta(days=40), 1),
    )
    newest = _on(D, 1, 2, 3)
    kept = [*straddling_new, *newest, *in_default_new]
    await write_records(engine, [*older, *straddling_old, *in_default_old, *kept])
    totals = await _totals(engine)
    cutoff = datetime(2025, 1, 30, 12, tzinfo=UTC)
    assert await prune(engine, cutoff, dry_run=True) == 11

    assert await prune(engine, cutoff, batch_size=1) == 11

    assert await _placement(engine) == {
        "requests_p20250130": 2, "requests_p20250131": 3, "requests_default": 1,
    }  # fmt: skip
    async with engine.connect() as connection:
        names = set(await partitions(connection))
    assert "requests_p20250128" not in names and "requests_p20250129" not in names
    assert await _ids(engine) == {r.id for r in kept}
    assert await _totals(engine) == totals  # sessions and rollups keep the pruned totals
    assert await prune(engine, cutoff) == 0


@pytest.mark.postgres
async def test_prune_drops_a_day_table_an_earlier_prune_left_detached(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    await ensure_partitions(engine, D, D)
    await write_records(engine, _on(D, 1, 2))
    async with engine.begin() as connection:  # as if a prune died after its detach
        await connection.execute(
            sa.text("ALTER TABLE requests DETACH PARTITION requests_p20250131")
        )
    assert await prune(engine, datetime(2025, 2, 1, tzinfo=UTC)) == 2
    async with engine.connect() as connection:
        assert await connection.scalar(sa.text("SELECT to_regclass('requests_p20250131')")) is None


@pytest.mark.postgres
async def test_a_writer_keeps_inserting_while_prune_drops_partitions(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    first = D - timedelta(days=20)
    await ensure_partitions(engine, first, D)
    old = [r for n in range(20) for r in _on(first + timedelta(days=n), 3, 9)]
    await write_records(engine, old)
    stop = asyncio.Event()
    written: list[RequestRecord] = []

    async def writer() -> None:
        minute = 0
        while not stop.is_set():
            minute += 1  # the newest day's partition and the default one
            batch = [
                make_record(minutes=minute),
                make_record(
                    created_at=datetime(2025, 3, 1, tzinfo=UTC) + timedelta(minutes=minute)
                ),
            ]
            assert await write_records(engine, batch) == 2
            written.extend(batch)

    task = asyncio.create_task(writer())
    await until(lambda: len(written) > 10)
    assert await prune(engine, datetime(2025, 1, 31, tzinfo=UTC)) == 40
    count = len(written)
    await until(lambda: len(written) > count + 10)
    stop.set()
    await task
    assert await _ids(engine) == {r.id for r in written}
    assert set(await _placement(engine)) == {"requests_p20250131", "requests_default"}
