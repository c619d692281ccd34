"""Compaction: finished days' daily cells rewritten in key order, unchanged, exactly once."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.compaction import GRACE, compact_finished_days, note_compacted
from proxy.store.rebuild import rebuild_rollups
from proxy.store.rows import write_records
from proxy.store.tables import rollup_state
from tests.store.factory import T0, make_record
from tests.store.rollup_truth import assert_rollups_match_raw_rows, assert_same_cells, stored_cells
from tests.store.test_rebuild import _varied, _write_while

DAY = timedelta(days=1)
TODAY = T0.replace(hour=0, minute=0, second=0, microsecond=0)


async def _compacted_until(engine: AsyncEngine) -> object:
    async with engine.connect() as connection:
        return await connection.scalar(select(rollup_state.c.compacted_until))


def _key_order(users: list[str | None]) -> list[str | None]:
    return sorted(users, key=lambda user: (user is None, user or ""))


async def _users_in_page_order(engine: AsyncEngine, day: object) -> list[str | None]:
    """The users of the ``user`` cube's cells of ``day``, in the order they lie on disk."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT user_id FROM rollups WHERE cube = 'user' AND grain = 'day'"
                " AND bucket_start = :day ORDER BY ctid"
            ),
            {"day": day},
        )
        return list(rows.scalars())


async def test_finished_days_are_rewritten_in_key_order_with_the_same_cells(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    yesterday = TODAY - DAY
    users = [f"u{n:03d}" for n in range(60)]
    # New users arrive in reverse order, batch by batch, as through a day of traffic.
    for user in reversed(users):
        await write_records(engine, [make_record(created_at=yesterday, user_id=user)])
    await write_records(engine, _varied(300, random.Random(7)))
    unsorted = await _users_in_page_order(engine, yesterday)
    assert unsorted != _key_order(unsorted)
    before = await stored_cells(engine)
    days = await compact_finished_days(engine, TODAY + GRACE)
    assert days == 4  # from the oldest record's day (T0 minus four) to yesterday
    assert await _compacted_until(engine) == TODAY
    assert await _users_in_page_order(engine, yesterday) == _key_order(unsorted)
    assert_same_cells(await stored_cells(engine), before)
    await assert_rollups_match_raw_rows(engine)


async def test_a_day_is_compacted_only_once_it_is_over_by_the_grace(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    await write_records(engine, [make_record(created_at=TODAY - DAY)])
    assert await compact_finished_days(engine, TODAY + GRACE - timedelta(seconds=1)) == 0
    assert await _compacted_until(engine) is None
    assert await compact_finished_days(engine, TODAY + GRACE) == 1
    assert await compact_finished_days(engine, TODAY + GRACE) == 0  # done already
    assert await _compacted_until(engine) == TODAY


async def test_a_compaction_waiting_for_a_lock_gives_the_day_to_the_next_round(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    await write_records(engine, [make_record(created_at=TODAY - DAY)])
    async with engine.connect() as blocker:
        # A writer's transaction in flight (row-exclusive on rollups) longer than the timeout.
        await blocker.execute(text("LOCK TABLE rollups IN ROW EXCLUSIVE MODE"))
        assert await compact_finished_days(engine, TODAY + GRACE) == 0
        await blocker.rollback()
    assert await _compacted_until(engine) is None
    assert await compact_finished_days(engine, TODAY + GRACE) == 1


async def test_records_written_during_compactions_count_exactly_once(
    postgres_engine: AsyncEngine,
) -> None:
    """Writers add to the very days being rewritten; each of their records is counted once."""
    engine = postgres_engine
    await write_records(engine, _varied(800, random.Random(8), days=3))
    stop = asyncio.Event()
    writers = [
        asyncio.create_task(_write_while(stop, engine, random.Random(seed))) for seed in (9, 10)
    ]
    try:
        for _ in range(4):
            async with engine.begin() as connection:
                await connection.execute(update(rollup_state).values(compacted_until=None))
            assert await compact_finished_days(engine, TODAY + GRACE) > 0
    finally:
        stop.set()
        written = sum(await asyncio.gather(*writers))
    assert written > 0
    await assert_rollups_match_raw_rows(engine)


async def test_a_rebuild_from_the_oldest_record_leaves_no_day_to_compact_again(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    await write_records(engine, _varied(300, random.Random(11)))
    await rebuild_rollups(engine)
    assert await _compacted_until(engine) == TODAY + DAY  # T0's day is long over
    assert await compact_finished_days(engine, TODAY + DAY + GRACE) == 0


async def test_a_rebuild_after_uncompacted_days_leaves_all_of_them_to_the_rounds(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    await write_records(engine, _varied(300, random.Random(12)))
    await rebuild_rollups(engine, since=TODAY - DAY)
    assert await _compacted_until(engine) is None  # the days before are not compacted
    assert await compact_finished_days(engine, TODAY + DAY + GRACE) == 5
    await assert_rollups_match_raw_rows(engine)


async def test_a_rebuilt_day_still_being_written_is_left_to_the_round_after_its_end(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    await write_records(engine, [make_record(created_at=TODAY)])
    async with engine.begin() as connection:
        await note_compacted(connection, TODAY, TODAY + DAY + GRACE - timedelta(seconds=1))
    assert await _compacted_until(engine) is None
    async with engine.begin() as connection:
        await note_compacted(connection, TODAY, TODAY + DAY + GRACE)
    assert await _compacted_until(engine) == TODAY + DAY


async def test_nothing_to_compact_on_sqlite(engine: AsyncEngine) -> None:
    if engine.dialect.name == "postgresql":
        pytest.skip("the SQLite case")
    await write_records(engine, [make_record(created_at=TODAY - DAY)])
    assert await compact_finished_days(engine, TODAY + GRACE) == 0
