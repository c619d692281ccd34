"""Postgres partitions of ``requests``: the migration, the keeper, the default partition, and
replays that must find a record they stored before, whatever partition it is in."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.metering import meter_batch
from proxy.pricing import Cost, PriceBook
from proxy.records import Exchange, RequestRecord
from proxy.store.engine import create_engine
from proxy.store.journal import Journal
from proxy.store.migrate import alembic_config, upgrade_database
from proxy.store.partitions import (
    DEFAULT_PARTITION,
    PartitionKeeper,
    ensure_partitions,
    id_time_window,
    partition_day,
    partition_name,
    partitions,
)
from proxy.store.queries import UsageQueries
from proxy.store.rows import record_row
from proxy.store.spool import Spool, decode_record, encode_record
from proxy.store.tables import requests
from proxy.store.writer import write_records
from proxy.tokens import TokenCounter
from proxy.usage import Usage
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.resilience.load import until
from tests.store.factory import T0, make_record, record_id
from tests.support.fake_upstream import FakeUpstream

DAY = T0.date()  # 2025-01-31: no partition is made for it unless a test asks


async def where_rows_are(engine: AsyncEngine) -> dict[str, int]:
    """Rows per partition."""
    query = "SELECT tableoid::regclass::text, count(*) FROM requests GROUP BY 1"
    async with engine.connect() as connection:
        return {name: n for name, n in (await connection.execute(sa.text(query))).all()}


async def partition_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await partitions(connection))


async def scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as connection:
        return await connection.scalar(sa.text(sql))


def _row_of_0007(record: RequestRecord, columns: set[str]) -> dict[str, Any]:
    """A request row as a writer of revision 0007 stored it: without later columns."""
    return {name: value for name, value in record_row(record).items() if name in columns}


def test_partition_names_and_days() -> None:
    assert partition_name(date(2026, 12, 2)) == "requests_p20261202"
    assert partition_day("requests_p20261202") == date(2026, 12, 2)
    assert partition_day("requests_p20261302") is None  # no 13th month
    assert partition_day(DEFAULT_PARTITION) is None
    assert partition_day("requests") is None


async def test_the_migration_moves_stored_rows_into_day_partitions(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0007"))
            await connection.commit()
        records = [
            make_record(created_at=T0 - timedelta(days=d, minutes=m))
            for d in range(3)
            for m in range(4)
        ]
        async with engine.begin() as connection:  # the old schema: key (id)
            columns = await connection.run_sync(
                lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("requests")}
            )
            await connection.execute(
                sa.insert(requests), [_row_of_0007(r, columns) for r in records]
            )
        await upgrade_database(engine)

        queries = UsageQueries(engine)
        for record in records:
            found = await queries.get_request(record.id)
            assert found is not None and found["created_at"] == record.created_at
        # The same records again are found stored, in whichever partition they went to.
        assert await write_records(engine, records) == 0
        async with engine.connect() as connection:
            key = await connection.run_sync(
                lambda sync: sa.inspect(sync).get_pk_constraint("requests")
            )
        assert key["constrained_columns"] == ["id", "created_at"]
        if engine.dialect.name != "postgresql":
            return
        days = [(T0 - timedelta(days=d)).date() for d in range(3)]
        assert await where_rows_are(engine) == {partition_name(day): 4 for day in days}
        today = datetime.now(UTC).date()
        ahead = {partition_name(today + timedelta(days=n)) for n in range(8)}
        names = await partition_names(engine)
        assert names >= ahead | {partition_name(day) for day in days} | {DEFAULT_PARTITION}
        assert await scalar(engine, "SELECT to_regclass('requests_unpartitioned')") is None
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_replicas_creating_partitions_at_once_create_each_once(
    postgres_url: str,
) -> None:
    engines = [create_engine(postgres_url) for _ in range(4)]
    try:
        await upgrade_database(engines[0])
        first, last = date(2031, 3, 1), date(2031, 3, 4)
        created = await asyncio.gather(*(ensure_partitions(e, first, last) for e in engines))
        wanted = {partition_name(date(2031, 3, d)) for d in range(1, 5)}
        made = [name for names in created for name in names]
        # Each made once; a replica that found another at work left it the rest, which the
        # next round (below) finishes.
        assert len(made) == len(set(made)) and set(made) <= wanted
        await ensure_partitions(engines[0], first, last)
        assert await partition_names(engines[0]) >= wanted
        assert await ensure_partitions(engines[1], first, last) == []
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


@pytest.mark.postgres
async def test_a_day_with_rows_in_the_default_partition_gets_them_moved(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    on_day = [make_record(created_at=T0 + timedelta(hours=h - 11)) for h in range(8)]
    day_before = [make_record(created_at=T0 - timedelta(days=1))]
    assert await write_records(engine, [*on_day, *day_before]) == 9
    assert await where_rows_are(engine) == {DEFAULT_PARTITION: 9}
    sessions_before = await UsageQueries(engine).get_session("s1")

    assert await ensure_partitions(engine, DAY, DAY) == [partition_name(DAY)]

    assert await where_rows_are(engine) == {partition_name(DAY): 8, DEFAULT_PARTITION: 1}
    # Replayed after the move: found in their new partition, counted nowhere again.
    assert await write_records(engine, [*on_day, *day_before]) == 0
    assert await UsageQueries(engine).get_session("s1") == sessions_before
    assert await where_rows_are(engine) == {partition_name(DAY): 8, DEFAULT_PARTITION: 1}
    # And a new record of that day goes to its partition, not the default.
    await write_records(engine, [make_record(created_at=T0)])
    assert (await where_rows_are(engine))[partition_name(DAY)] == 9


@pytest.mark.postgres
async def test_inserts_into_the_default_partition_wait_for_a_move_and_are_kept(
    postgres_engine: AsyncEngine,
) -> None:
    """A writer storing rows of the day being moved out of the default partition meanwhile:
    the move locks them out until its partition is attached, then they go into it."""
    engine = postgres_engine
    await write_records(
        engine, [make_record(created_at=T0 + timedelta(seconds=s)) for s in range(50)]
    )
    stop = asyncio.Event()
    written: list[int] = []

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            written.append(
                await write_records(engine, [make_record(created_at=T0 + timedelta(minutes=n))])
            )

    task = asyncio.create_task(writer())
    await until(lambda: len(written) > 3)
    assert await ensure_partitions(engine, DAY, DAY) == [partition_name(DAY)]
    await until(lambda: len(written) > 10)
    stop.set()
    await task
    placed = await where_rows_are(engine)
    assert placed.get(DEFAULT_PARTITION, 0) == 0
    assert placed[partition_name(DAY)] == 50 + sum(written) == 50 + len(written)


@pytest.mark.postgres
async def test_the_keeper_creates_the_days_ahead_once_the_schema_is_ready(
    postgres_engine: AsyncEngine,
) -> None:
    ready = False
    keeper = PartitionKeeper(
        postgres_engine, ready=lambda: ready, ahead_days=2, interval=0.05,
        today=lambda: date(2032, 6, 30),
    )  # fmt: skip
    wanted = {"requests_p20320630", "requests_p20320701", "requests_p20320702"}
    keeper.start()
    try:
        await asyncio.sleep(0.2)
        assert not await partition_names(postgres_engine) & wanted
        ready = True
        for _ in range(200):
            if await partition_names(postgres_engine) >= wanted:
                break
            await asyncio.sleep(0.05)
        assert await partition_names(postgres_engine) >= wanted
        assert "requests_p20320703" not in await partition_names(postgres_engine)
    finally:
        await keeper.stop()


async def test_the_keeper_does_nothing_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'tally.db'}")
    try:
        await upgrade_database(engine)
        keeper = PartitionKeeper(engine)
        keeper.start()
        assert await keeper.keep() == []
        await keeper.stop()
    finally:
        await engine.dispose()


def _exchanges() -> list[Exchange]:
    """Exchanges over two partitioned days and one in the default partition, with times at
    whole seconds, whole milliseconds and odd microseconds."""
    times = [
        datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 2, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 2, 12, 30, 15, 123000, tzinfo=UTC),
        datetime(2026, 3, 2, 12, 30, 15, 123457, tzinfo=UTC),
        datetime(2026, 5, 9, 8, 7, 6, 543210, tzinfo=UTC),  # no partition: the default one
    ]
    return [
        Exchange(
            id=record_id(at), created_at=at, method="POST", endpoint="/v1/chat/completions",
            upstream="http://upstream", stream=n % 2 == 0, model="gpt-4o-mini",
            session_id=f"s{n % 2}", user_id="u1", properties={"env": "prod"}, key_id=None,
            status_code=200, response_model="gpt-4o-mini-2024-07-18", completed=True,
            latency_ms=10.0 + n,
            provider_usage=Usage(prompt_tokens=9, completion_tokens=6, total_tokens=15),
            cost=Cost(Decimal("0.0000123"), "builtin", "2026-01", "gpt-4o-mini"),
        )
        for n, at in enumerate(times)
    ]  # fmt: skip


@pytest.mark.postgres
async def test_records_replayed_by_spool_and_journal_are_stored_once(
    postgres_engine: AsyncEngine, tmp_path: Path
) -> None:
    engine = postgres_engine
    await ensure_partitions(engine, date(2026, 3, 1), date(2026, 3, 2))
    exchanges = _exchanges()
    records = meter_batch(TokenCounter(), PriceBook(), exchanges)
    for record in records:  # what the spool keeps: the same instant, to the microsecond
        assert decode_record(encode_record(record)).created_at == record.created_at

    # Journaled, stored, then the process dies before the journal heard: the next start
    # recovers every line. Meanwhile the same records also went to the spool.
    journal = Journal(tmp_path / "journal")
    journal.open()
    for exchange in exchanges:
        journal.write(exchange)
    assert await write_records(engine, records) == len(records)
    spool = Spool(tmp_path / "spool", 1 << 20)
    await spool.open()
    assert await spool.append(records) == len(records)
    journal.close()

    batch = await spool.read(100)
    assert batch is not None
    assert [dataclasses.asdict(r) for r in batch.records] == [
        dataclasses.asdict(r) for r in records
    ]
    assert await write_records(engine, batch.records) == 0
    await spool.acknowledge(batch)
    await spool.close()
    again = Journal(tmp_path / "journal")
    recovered = again.open()
    assert sorted(e.id for e in recovered) == sorted(e.id for e in exchanges)
    recovered_records = meter_batch(TokenCounter(), PriceBook(), recovered)
    assert {r.id: r.created_at for r in recovered_records} == {r.id: r.created_at for r in records}
    assert await write_records(engine, recovered_records) == 0
    again.settle(recovered)
    again.close()

    assert await where_rows_are(engine) == {
        "requests_p20260301": 2, "requests_p20260302": 3, DEFAULT_PARTITION: 1,
    }  # fmt: skip
    assert await scalar(engine, "SELECT count(DISTINCT id) FROM requests") == len(records)
    async with engine.connect() as connection:
        sessions = dict(
            (await connection.execute(sa.text("SELECT session_id, requests FROM sessions"))).all()
        )
        rolled = await connection.scalar(
            sa.text("SELECT sum(requests) FROM rollups WHERE cube = 'total' AND grain = 'hour'")
        )
    assert sessions == {"s0": 3, "s1": 3}
    assert rolled == len(records)


@pytest.mark.postgres
async def test_a_serving_proxy_keeps_the_days_ahead(
    postgres_url: str, fake_upstream: FakeUpstream
) -> None:
    engine = create_engine(postgres_url)
    try:
        await upgrade_database(engine)
        last = partition_name(datetime.now(UTC).date() + timedelta(days=7))
        async with engine.begin() as connection:
            await connection.execute(sa.text(f"DROP TABLE {last}"))
        settings = proxy_settings(fake_upstream.base_url, postgres_url)
        async with start_proxy(settings) as running:
            for _ in range(200):
                if last in await partition_names(engine):
                    break
                await asyncio.sleep(0.05)
            assert last in await partition_names(engine)
            # And the proxy stores records as ever, into today's partition.
            await running.sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            await running.records(1)
        today = partition_name(datetime.now(UTC).date())
        assert (await where_rows_are(engine)).get(today) == 1
    finally:
        await engine.dispose()


def test_the_time_in_a_record_id() -> None:
    at = datetime(2026, 12, 2, 5, 6, 7, 891000, tzinfo=UTC)
    window = id_time_window(record_id(at))
    assert window is not None and window[0] < at < window[1]
    assert window[1] - window[0] == timedelta(hours=2)
    assert id_time_window("import-0001") is None
    assert id_time_window("zz" * 16) is None
    assert id_time_window("0" * 32) is None  # 1970: not a minted id
    assert id_time_window("f" * 32) is None  # beyond year 9999


async def test_a_record_is_found_by_id_whether_or_not_its_id_tells_its_time(
    engine: AsyncEngine,
) -> None:
    minted = make_record(created_at=T0)
    # Put in by SQL from elsewhere: an id that is no time, or a time far from created_at.
    foreign = make_record(created_at=T0, id="import-0001")
    misleading = make_record(created_at=T0, id=record_id(T0 + timedelta(days=400)))
    await write_records(engine, [minted, foreign, misleading])
    queries = UsageQueries(engine)
    for record in (minted, foreign, misleading):
        found = await queries.get_request(record.id)
        assert found is not None and found["id"] == record.id
    assert await queries.get_request(record_id(T0)) is None


async def test_the_migration_goes_back_with_the_rows(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        records = [make_record(created_at=T0 + timedelta(days=d)) for d in range(3)]
        await write_records(engine, records)
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0007"))
            await connection.commit()
            key = await connection.run_sync(
                lambda sync: sa.inspect(sync).get_pk_constraint("requests")
            )
            assert key["constrained_columns"] == ["id"]
            stored = await connection.scalar(sa.text("SELECT count(*) FROM requests"))
            assert stored == 3
            if engine.dialect.name == "postgresql":
                left = await connection.scalar(
                    sa.text("SELECT count(*) FROM pg_class WHERE relname LIKE 'requests_%'")
                )
                assert left == 0
        await upgrade_database(engine)
        assert await write_records(engine, records) == 0
    finally:
        await engine.dispose()
