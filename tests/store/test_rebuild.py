"""``rebuild_rollups``: whole days recomputed from raw rows, exactly once under live writers."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.rebuild import DayDone, rebuild_rollups
from proxy.store.rollups import rollups_complete
from proxy.store.rows import write_records
from proxy.store.tables import requests, rollup_state, rollups
from proxy.usage import Usage
from tests.store.factory import T0, make_record
from tests.store.rollup_truth import (
    assert_rollups_match_raw_rows,
    assert_same_cells,
    stored_cells,
)

DAY = timedelta(days=1)


def _varied(n: int, rng: random.Random, days: int = 4) -> list[RequestRecord]:
    """Records over ``days`` days before T0's day, of several models, users, keys and
    properties, some unpriced, failed or without usage."""
    records = []
    for _ in range(n):
        at = T0 - timedelta(minutes=rng.randrange(days * 24 * 60))
        records.append(
            make_record(
                created_at=at,
                model=rng.choice(["gpt-4o", "gpt-4o-mini", None]),
                user_id=rng.choice(["u1", "u2", "", None]),
                key_id=rng.choice([None, "k1"]),
                endpoint=rng.choice(["/v1/chat/completions", "/v1/embeddings"]),
                properties=rng.choice([{}, {"env": "prod"}, {"env": "dev", "team": "a"}]),
                cost_usd=rng.choice([None, Decimal("0.000001") * rng.randrange(1, 10**6)]),
                status_code=rng.choice([200, 200, 200, 429]),
                usage=rng.choice([None, Usage(3, 4, 7), Usage(10, 0, 10, cached_tokens=5)]),
                latency_ms=rng.choice([None, 10.25, 300.0]),
                tool_calls=rng.choice([0, 0, 2]),
            )
        )
    return records


async def _snapshot_then_wipe(engine: AsyncEngine) -> dict[Any, Any]:
    cells = await stored_cells(engine)
    async with engine.begin() as connection:
        await connection.execute(delete(rollups))
    return cells


async def test_a_rebuild_makes_the_cells_the_writer_made(engine: AsyncEngine) -> None:
    await write_records(engine, _varied(600, random.Random(1)))
    written = await _snapshot_then_wipe(engine)
    report = await rebuild_rollups(engine)
    assert_same_cells(await stored_cells(engine), written)
    await assert_rollups_match_raw_rows(engine)
    assert report.records == 600 and report.complete
    assert report.first_day is not None and report.last_day == T0.replace(hour=0)
    assert report.days == (report.last_day - report.first_day) // DAY + 1 == 5


async def test_a_rebuild_corrects_wrong_cells_and_leaves_days_before_since(
    engine: AsyncEngine,
) -> None:
    await write_records(engine, _varied(300, random.Random(2)))
    async with engine.begin() as connection:
        await connection.execute(update(rollups).values(requests=rollups.c.requests + 1000))
        await connection.execute(update(rollup_state).values(complete=False))
    since = T0 - 2 * DAY + timedelta(hours=5)  # the whole day of ``since`` is rebuilt
    days: list[DayDone] = []
    report = await rebuild_rollups(engine, since=since, progress=days.append)
    assert [d.day for d in days] == [T0.replace(hour=0) - n * DAY for n in (2, 1, 0)]
    assert [(d.days_done, d.days_total) for d in days] == [(1, 3), (2, 3), (3, 3)]
    assert days[-1].records == report.records
    cells = await stored_cells(engine)
    boundary = T0.replace(hour=0) - 2 * DAY
    assert all(c["requests"] > 1000 for c in cells.values() if c["bucket_start"] < boundary)
    assert all(c["requests"] < 1000 for c in cells.values() if c["bucket_start"] >= boundary)
    async with engine.connect() as connection:
        assert not await rollups_complete(connection)  # it did not start at the oldest record
    await rebuild_rollups(engine)
    await assert_rollups_match_raw_rows(engine)
    async with engine.connect() as connection:
        assert await rollups_complete(connection)


async def test_a_day_without_raw_rows_left_loses_its_cells(engine: AsyncEngine) -> None:
    await write_records(engine, [make_record(created_at=T0 - 3 * DAY), make_record()])
    async with engine.begin() as connection:
        await connection.execute(delete(requests).where(requests.c.created_at < T0 - DAY))
    await rebuild_rollups(engine, since=T0 - 5 * DAY)
    await assert_rollups_match_raw_rows(engine)


async def test_an_empty_database_is_complete_after_a_rebuild(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(update(rollup_state).values(complete=False))
    report = await rebuild_rollups(engine)
    assert report.days == 0 and report.complete


async def _write_while(stop: asyncio.Event, engine: AsyncEngine, rng: random.Random) -> int:
    """Write small batches, many of them for the days being rebuilt, until ``stop``."""
    written = 0
    while not stop.is_set():
        batch = _varied(rng.randrange(1, 15), rng, days=3)
        written += await write_records(engine, batch)
        await asyncio.sleep(0)
    return written


async def test_records_written_during_a_rebuild_count_exactly_once(engine: AsyncEngine) -> None:
    """Without the lock (replaced by a no-op) this fails on Postgres every time: records
    committed between a day's read and its write vanish from the rollups."""
    await write_records(engine, _varied(1500, random.Random(3)))
    async with engine.begin() as connection:
        await connection.execute(delete(rollups))  # as if stored before the rollups existed
    stop = asyncio.Event()
    writers = [
        asyncio.create_task(_write_while(stop, engine, random.Random(seed))) for seed in (4, 5)
    ]
    try:
        for _ in range(3):
            await rebuild_rollups(engine)
    finally:
        stop.set()
        written = sum(await asyncio.gather(*writers))
    assert written > 0
    await assert_rollups_match_raw_rows(engine)
    async with engine.connect() as connection:
        total = await connection.scalar(
            select(func.sum(rollups.c.requests)).where(
                rollups.c.cube == "total", rollups.c.grain == "hour"
            )
        )
    assert total == 1500 + written


IMPORTED_PROPERTIES = [
    '{"env": "prod", "n": 1, "m": 1.0, "flag": true, "gone": null}',
    '{"n": "1", "nested": {"a": [1, "x"]}, "u": "\\u00e9t\\u00e9", "env": "pr\\u006fd"}',
    '{"m": 1.00, "big": 12345678901234567890, "e": 1e2}',
    '["not", "an", "object"]',
    "{}",
]


async def test_property_values_put_in_by_sql_count_as_the_api_reads_them(
    engine: AsyncEngine,
) -> None:
    """JSON that only SQL writes (numbers, booleans, nulls, nested values, escapes, an array)
    sums to the cells ``rollup_rows`` makes of the same rows."""
    at = T0.strftime("%Y-%m-%d %H:%M:%S")
    async with engine.begin() as connection:
        for n, properties in enumerate(IMPORTED_PROPERTIES * 3):
            await connection.execute(
                text(
                    "INSERT INTO requests (id, created_at, user_id, properties, total_tokens)"
                    f" VALUES ('imported-{n}', '{at}', 'u{n % 2}', :properties, {n})"
                ),
                {"properties": properties},
            )
    await rebuild_rollups(engine)
    await assert_rollups_match_raw_rows(engine)
    cells = await stored_cells(engine)
    values = {
        (c["property_name"], c["property_value"]): c["requests"]
        for c in cells.values()
        if c["cube"] == "property" and c["grain"] == "hour"
    }
    assert values[("n", "1")] == 6  # the number 1 and the string "1"
    assert values[("m", "1.0")] == 6  # 1.0 and 1.00, as Python reads both
    assert values[("env", "prod")] == 6 and ("gone", "null") not in values


async def test_a_record_written_after_a_rebuild_adds_to_the_rebuilt_cells(
    engine: AsyncEngine,
) -> None:
    """Rebuilt cells have the keys the writer's upsert finds (on SQLite: the same text for
    the same bucket), so a later record grows them instead of making look-alikes."""
    await write_records(engine, [make_record(properties={"env": "prod"})])
    await _snapshot_then_wipe(engine)
    await rebuild_rollups(engine)
    count = select(func.count()).select_from(rollups)
    async with engine.connect() as connection:
        cells = await connection.scalar(count)
    await write_records(engine, [make_record(minutes=1, properties={"env": "prod"})])
    async with engine.connect() as connection:
        assert await connection.scalar(count) == cells
    await assert_rollups_match_raw_rows(engine)


async def test_a_rebuild_from_midweek_sums_the_weeks_again_from_their_days(
    engine: AsyncEngine,
) -> None:
    """Weekly cells hold days before ``since`` too: the week is summed from all its days,
    those rebuilt (with rows imported by SQL) and those left as they were."""
    await write_records(engine, _varied(500, random.Random(4), days=20))
    imported_at = T0 - 9 * DAY  # a Wednesday; its week began on the Monday before
    async with engine.begin() as connection:
        for n in range(5):
            await connection.execute(
                text(
                    "INSERT INTO requests (id, created_at, user_id, properties, total_tokens)"
                    f" VALUES ('imported-{n}', '{imported_at.strftime('%Y-%m-%d %H:%M:%S')}',"
                    f" 'u{n % 2}', :properties, 7)"
                ),
                {"properties": '{"env":"x"}'},
            )
    report = await rebuild_rollups(engine, since=imported_at)
    assert report.days == 10
    await assert_rollups_match_raw_rows(engine)
    weekly = [c for c in (await stored_cells(engine)).values() if c["grain"] == "week"]
    assert {c["cube"] for c in weekly} == {"user", "property_user"}
    assert len({c["bucket_start"] for c in weekly}) == 4  # 20 days touch four weeks
