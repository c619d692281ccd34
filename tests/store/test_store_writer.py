from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store import writer as writer_module
from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.queries import UsageQueries
from proxy.store.spool import Spool
from proxy.store.tables import requests, sessions
from proxy.store.writer import RecordWriter, write_records
from proxy.usage import Usage
from tests.store.factory import identity, make_record
from tests.support.postgres import PostgresServer

Writer = RecordWriter[RequestRecord]


@pytest.fixture
async def writers(engine: AsyncEngine) -> AsyncIterator[Callable[..., Writer]]:
    """Make started writers on the test database; all are stopped at the end."""
    made: list[Writer] = []

    async def make(**options: Any) -> Writer:
        prepare = options.pop("prepare", identity)
        writer: Writer = RecordWriter(options.pop("engine", engine), prepare, **options)
        await writer.start()
        made.append(writer)
        return writer

    yield make  # type: ignore[misc]
    for writer in made:
        await writer.stop(timeout=5)


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def count(engine: AsyncEngine, table: sa.Table = requests) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def test_record_is_queryable_quickly_at_low_load(engine: AsyncEngine, writers: Any) -> None:
    writer = await writers()
    record = make_record()
    started = time.monotonic()
    assert writer.submit(record) is True
    queries = UsageQueries(engine)
    for _ in range(1000):
        if await queries.get_request(record.id) is not None:
            break
        await asyncio.sleep(0.005)
    assert time.monotonic() - started < 0.25
    # The commit runs off the loop and is counted back on it, so a reader can see the row a
    # moment before the counter moves.
    for _ in range(200):
        if writer.written_total == 1:
            break
        await asyncio.sleep(0.005)
    assert writer.written_total == 1
    assert writer.last_flush_at is not None


async def test_batches_take_what_is_queued_up_to_max_batch(engine: AsyncEngine) -> None:
    sizes: list[int] = []
    threads: set[str] = set()

    def prepare(records: list[RequestRecord]) -> list[RequestRecord]:
        sizes.append(len(records))
        threads.add(threading.current_thread().name)
        return records

    writer: Writer = RecordWriter(engine, prepare, max_batch=100)
    for i in range(250):
        assert writer.submit(make_record(minutes=i))
    assert writer.queue_depth == 250
    await writer.start()
    await writer.stop(timeout=10)
    assert sizes == [100, 100, 50]
    assert threading.main_thread().name not in threads  # prepare ran in a worker thread
    assert await count(engine) == 250
    assert writer.written_total == 250
    assert writer.queue_depth == 0


async def test_replayed_record_is_stored_and_counted_once(
    engine: AsyncEngine, writers: Any
) -> None:
    writer = await writers()
    record = make_record()
    writer.submit(record)
    await wait_until(lambda: writer.written_total == 1)
    writer.submit(record)  # replay in a later batch
    writer.submit(make_record(minutes=1))
    await wait_until(lambda: writer.queue_depth == 0)
    assert await write_records(engine, [record, record]) == 0  # and within one batch
    assert writer.written_total == 2
    assert await count(engine) == 2
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None
    assert session["requests"] == 2
    assert session["total_tokens"] == 30
    assert session["cost_usd"] == Decimal("0.000005")


async def test_duplicate_inside_one_batch_counts_once(engine: AsyncEngine) -> None:
    record = make_record()
    assert await write_records(engine, [record, record]) == 1
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None
    assert session["requests"] == 1


async def test_session_totals_are_exact(engine: AsyncEngine, writers: Any) -> None:
    writer = await writers(max_batch=37)
    usage = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10, reasoning_tokens=1)
    for i in range(1000):
        writer.submit(make_record(minutes=i / 10, usage=usage, cost_usd=Decimal("0.0000025")))
    writer.submit(make_record(minutes=200, cost_usd=None, usage=None, user_id="u2"))
    writer.submit(make_record(minutes=201, cost_usd=Decimal("0.1"), user_id=None))
    await wait_until(lambda: writer.queue_depth == 0)
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None
    assert session["requests"] == 1002
    assert session["cost_usd"] == Decimal("0.1025")  # 1000 x 0.0000025 + 0.1, not a float
    assert session["unpriced_requests"] == 1
    assert session["total_tokens"] == 10000 + 15
    assert session["reasoning_tokens"] == 1000
    assert session["user_id"] == "u2"  # the last request with a user
    assert session["first_request_at"] == make_record().created_at
    assert session["last_request_at"] == make_record(minutes=201).created_at


async def test_nul_characters_from_clients_do_not_lose_the_record(engine: AsyncEngine) -> None:
    # Postgres text and JSONB cannot hold U+0000; a body's model or user, or a path, can.
    record = make_record(model="gpt\x00-4o", user_id="al\x00ice", session_id="s\x00")
    record.endpoint = "/v1/chat\x00"
    record.properties = {"k\x00": "v\x00"}
    assert await write_records(engine, [record]) == 1
    async with engine.connect() as connection:
        row = (await connection.execute(sa.select(requests))).mappings().one()
        session = (await connection.execute(sa.select(sessions))).mappings().one()
    assert (row["model"], row["user_id"], row["endpoint"]) == (
        "gpt\ufffd-4o",
        "al\ufffdice",
        "/v1/chat\ufffd",
    )
    assert row["properties"] == {"k\ufffd": "v\ufffd"}
    assert session["session_id"] == "s\ufffd" and session["requests"] == 1


async def test_session_cost_is_null_until_one_request_is_priced(engine: AsyncEngine) -> None:
    queries = UsageQueries(engine)
    await write_records(engine, [make_record(cost_usd=None)])
    session = await queries.get_session("s1")
    assert session is not None
    assert (session["cost_usd"], session["unpriced_requests"]) == (None, 1)
    await write_records(engine, [make_record(minutes=1, cost_usd=Decimal("0.5"))])
    session = await queries.get_session("s1")
    assert session is not None
    assert (session["cost_usd"], session["unpriced_requests"]) == (Decimal("0.5"), 1)


async def test_records_out_of_order_keep_first_and_last(engine: AsyncEngine) -> None:
    late = make_record(minutes=10, user_id="late")
    early = make_record(minutes=-10, user_id="early")
    await write_records(engine, [late])
    await write_records(engine, [early])
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None
    assert session["first_request_at"] == early.created_at
    assert session["last_request_at"] == late.created_at
    assert session["user_id"] == "late"


async def test_two_writers_on_one_database(engine: AsyncEngine, database_url: str) -> None:
    """Two replicas write overlapping records into the same sessions: nothing lost or doubled."""
    other = create_engine(database_url)
    records = [
        make_record(minutes=i, session_id=f"s{i % 3}", cost_usd=Decimal("0.000001"))
        for i in range(600)
    ]
    first: Writer = RecordWriter(engine, identity, max_batch=50)
    second: Writer = RecordWriter(other, identity, max_batch=50)
    for record in records[:400]:
        first.submit(record)
    for record in records[200:]:  # 200 records go through both
        second.submit(record)
    await asyncio.gather(first.start(), second.start())
    await asyncio.gather(first.stop(timeout=20), second.stop(timeout=20))
    await other.dispose()
    assert first.written_total + second.written_total == 600
    assert await count(engine) == 600
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.select(sessions))).mappings().all()
    assert sorted(r["requests"] for r in rows) == [200, 200, 200]
    assert {r["cost_usd"] for r in rows} == {Decimal("0.0002")}
    assert sum(r["total_tokens"] for r in rows) == 600 * 15


async def test_full_queue_refuses_and_warns(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    writer: Writer = RecordWriter(engine, identity, queue_size=3)
    caplog.set_level(logging.WARNING, logger="proxy.store.writer")
    assert all(writer.submit(make_record(minutes=i)) for i in range(3))
    assert writer.submit(make_record(minutes=4)) is False
    assert writer.dropped_total == 1 and writer.lost == {"queue_full": 1}
    assert "lost records (queue_full 1; 1 in total)" in caplog.text
    assert "3 queued" in caplog.text
    assert not writer.recordable  # a new request's record would be lost
    await writer.start()
    await writer.stop()
    assert await count(engine) == 3
    assert writer.submit(make_record(minutes=5)) is False  # stopped
    assert writer.lost == {"queue_full": 1, "closed": 1}


async def test_stop_drains_and_logs(engine: AsyncEngine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.store.writer")
    writer: Writer = RecordWriter(engine, identity, max_batch=10)
    await writer.start()
    for i in range(95):
        writer.submit(make_record(minutes=i))
    await writer.stop(timeout=10)
    assert await count(engine) == 95
    assert "wrote 95 records in total" in caplog.text or "95 in total" in caplog.text


async def test_failed_writes_are_retried_and_nothing_is_lost(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A database without tables fails every write, like one that is down, until migrated."""
    caplog.set_level(logging.ERROR, logger="proxy.store.writer")
    engine = create_engine(database_url)
    writer: Writer = RecordWriter(engine, identity, max_lag=0.2)
    try:
        await writer.start()
        writer.submit(make_record())
        await wait_until(lambda: writer.failed_batches >= 1)
        assert writer.submit(make_record(minutes=1))  # still accepting meanwhile
        await asyncio.sleep(0.25)
        assert writer.oldest_pending_age > 0.2
        assert writer.healthy is False
        assert writer.queue_depth == 2
        await upgrade_database(engine)
        await wait_until(lambda: writer.queue_depth == 0, within=10)
        assert writer.healthy is True
        assert await count(engine) == 2
        assert "retrying in" in caplog.text
    finally:
        await writer.stop(timeout=5)
        await engine.dispose()


async def test_stop_gives_up_after_timeout(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="proxy.store.writer")
    engine = create_engine(database_url)  # never migrated: every write fails
    writer: Writer = RecordWriter(engine, identity)
    await writer.start()
    writer.submit(make_record())
    started = time.monotonic()
    await writer.stop(timeout=0.3)
    assert time.monotonic() - started < 2
    assert "1 records unwritten" in caplog.text
    await engine.dispose()


async def test_one_bad_item_does_not_lose_the_batch(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="proxy.store.writer")

    def prepare(records: list[RequestRecord]) -> list[RequestRecord]:
        if any(r.model == "boom" for r in records):
            raise ValueError("cannot price")
        return records

    writer: Writer = RecordWriter(engine, prepare)
    for model in ("a", "boom", "b"):
        writer.submit(make_record(model=model))
    await writer.start()
    await writer.stop()
    assert writer.dropped_total == 1
    assert await count(engine) == 2


async def test_stats_for_readyz(engine: AsyncEngine, writers: Any) -> None:
    writer = await writers()
    stats = writer.stats()
    assert stats["queue_depth"] == 0
    assert stats["oldest_pending_age"] == 0
    assert stats["healthy"] is True
    assert set(stats) >= {"written_total", "failed_batches", "last_flush_at"}


async def test_money_must_be_decimal(engine: AsyncEngine) -> None:
    with pytest.raises(sa.exc.StatementError, match="money must be a Decimal"):
        await write_records(engine, [make_record(cost_usd=0.1)])


@pytest.mark.postgres
async def test_writer_rides_out_a_postgres_restart(
    restartable_postgres: PostgresServer, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="proxy.store.writer")
    engine = create_engine(postgres_url)
    await upgrade_database(engine)
    writer: Writer = RecordWriter(engine, identity)
    await writer.start()
    try:
        writer.submit(make_record())
        await wait_until(lambda: writer.written_total == 1)
        await asyncio.to_thread(restartable_postgres.stop)
        writer.submit(make_record(minutes=1))
        await wait_until(lambda: writer.failed_batches >= 1, within=15)
        assert writer.submit(make_record(minutes=2))  # still accepting while the db is down
        await asyncio.to_thread(restartable_postgres.start)
        await wait_until(lambda: writer.queue_depth == 0, within=30)
        assert writer.written_total == 3
        session = await UsageQueries(engine).get_session("s1")
        assert session is not None
        assert session["requests"] == 3
    finally:
        await writer.stop(timeout=5)
        await engine.dispose()


async def test_refused_records_do_not_block_the_queue(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Values the database rejects are dropped one by one instead of retried forever."""
    caplog.set_level(logging.CRITICAL, logger="proxy.store.writer")
    writer: Writer = RecordWriter(engine, identity)
    good = [make_record(minutes=i) for i in range(3)]
    bad_money = make_record(minutes=5, cost_usd=0.1)  # a float: refused by the Money type
    too_big = make_record(minutes=6, cost_usd=Decimal("1e25"))  # beyond NUMERIC(30,12)
    long_model = make_record(minutes=7, model="m" * 1000, user_id="u" * 1000)
    for record in (good[0], bad_money, good[1], too_big, long_model, good[2]):
        writer.submit(record)
    await writer.start()
    await writer.stop(timeout=10)
    assert writer.dropped_total == 2
    assert writer.failed_batches == 0
    assert await count(engine) == 4
    stored = await UsageQueries(engine).get_request(long_model.id)
    assert stored is not None
    assert stored["model"] == "m" * 256  # clipped to the column


# -- with a spool: the database never holds the queue up ---------------------------------------


async def spooled_writer(engine: AsyncEngine, spool_dir: Path, **options: Any) -> Writer:
    writer: Writer = RecordWriter(engine, identity, spool=Spool(spool_dir, 1024**2), **options)
    await writer.start()
    return writer


def spool_files(directory: Path) -> list[Path]:
    return list(directory.glob("*/*"))


async def session_of(engine: AsyncEngine, session_id: str = "s1") -> dict[str, Any]:
    session = await UsageQueries(engine).get_session(session_id)
    assert session is not None
    return session


async def test_unreachable_database_spools_then_replays_in_order(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database without tables fails every write, like one that is down, until migrated."""
    caplog.set_level(logging.WARNING, logger="proxy.store")
    engine = create_engine(database_url)
    writer = await spooled_writer(engine, tmp_path, queue_size=100, max_batch=20)
    try:
        records = [make_record(minutes=i) for i in range(300)]
        for record in records[:150]:
            assert writer.submit(record)  # never refused: the queue spills to disk
            await asyncio.sleep(0.001)
        await wait_until(lambda: writer.spooled_total >= 150 - 20 * 2)
        for record in records[150:]:
            assert writer.submit(record)
            await asyncio.sleep(0.001)
        await wait_until(lambda: writer.queue_depth == 0)
        assert writer.dropped_total == 0
        stats = writer.stats()
        assert stats["spool_records"] == 300
        assert stats["database_down_seconds"] is not None
        assert "spooling records to" in caplog.text
        await upgrade_database(engine)
        await wait_until(lambda: writer.replayed_total == 300, within=15)
        assert writer.written_total == 300 and writer.stats()["spool_records"] == 0
        assert writer.stats()["database_down_seconds"] is None
        assert "writable again" in caplog.text
        session = await session_of(engine)
        assert session["requests"] == 300
        assert session["total_tokens"] == 300 * 15
        assert session["cost_usd"] == Decimal("0.00075")
        async with engine.connect() as connection:
            stored = (await connection.execute(sa.select(requests.c.id))).scalars().all()
        assert sorted(stored) == sorted(r.id for r in records)
    finally:
        await writer.stop(timeout=5)
        await engine.dispose()
    assert spool_files(tmp_path) == []  # the spool is gone


async def test_stop_with_the_database_down_keeps_records_for_the_next_start(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="proxy.store")
    engine = create_engine(database_url)  # not migrated yet: down
    first = await spooled_writer(engine, tmp_path)
    records = [make_record(minutes=i) for i in range(120)]
    for record in records:
        first.submit(record)
    await first.stop(timeout=5)
    assert first.written_total == 0 and first.dropped_total == 0
    assert first.spooled_total == 120
    assert first.submit(make_record()) is False  # closed
    await upgrade_database(engine)
    await write_records(engine, records[:1])  # one was stored meanwhile: not counted twice
    second = await spooled_writer(engine, tmp_path)
    try:
        await wait_until(lambda: second.replayed_total == 120)
        assert second.written_total == 119 and second.stats()["spool_records"] == 0
        assert (await session_of(engine))["requests"] == 120
    finally:
        await second.stop(timeout=5)
        await engine.dispose()


async def test_slow_database_spools_instead_of_waiting(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A table lock held elsewhere makes writes hang; after write_timeout they are spooled."""
    caplog.set_level(logging.CRITICAL, logger="proxy.store")
    engine = create_engine(database_url)
    await upgrade_database(engine)
    locker = create_engine(database_url)
    writer = await spooled_writer(engine, tmp_path, write_timeout=0.3, max_batch=10)
    try:
        async with locker.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(sa.text("LOCK TABLE requests IN EXCLUSIVE MODE"))
            else:
                await connection.exec_driver_sql("BEGIN EXCLUSIVE")
            for i in range(100):
                writer.submit(make_record(minutes=i))
                await asyncio.sleep(0.002)
            # The batch whose write timed out is spooled a moment after the failure counts.
            await wait_until(
                lambda: (
                    writer.queue_depth == 0
                    and writer.failed_batches > 0
                    and writer.stats()["spool_records"] == 100
                )
            )
            assert writer.stats()["spool_records"] == 100
            await connection.rollback()
        await wait_until(lambda: writer.replayed_total == 100, within=15)
        assert (await session_of(engine))["requests"] == 100
        assert await count(engine) == 100
    finally:
        await writer.stop(timeout=5)
        await locker.dispose()
        await engine.dispose()


@pytest.mark.parametrize(
    ("queue_size", "max_batch", "spooled"), [(10_000, 100, False), (40, 10, True)]
)
async def test_busy_database_is_waited_for_until_the_queue_is_half_full(
    engine: AsyncEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    queue_size: int,
    max_batch: int,
    spooled: bool,
) -> None:
    """Writes slower than the load, yet working: records queue up and go in larger batches;
    the spool (fsync, read back, decode) is for a queue getting full, not for a busy day."""
    real_write = writer_module.write_records
    batch_sizes: list[int] = []

    async def slow_write(engine: AsyncEngine, records: list[RequestRecord]) -> int:
        batch_sizes.append(len(records))
        await asyncio.sleep(0.05)
        return await real_write(engine, records)

    monkeypatch.setattr(writer_module, "write_records", slow_write)
    writer = await spooled_writer(engine, tmp_path, queue_size=queue_size, max_batch=max_batch)
    try:
        for i in range(300):
            assert writer.submit(make_record(minutes=i))
            await asyncio.sleep(0.001)
        await wait_until(lambda: writer.queue_depth == 0 and not writer.stats()["spool_records"])
        assert writer.dropped_total == 0
        assert (writer.spooled_total > 0) is spooled
        assert await count(engine) == 300
        if not spooled:
            assert max(batch_sizes) > 20  # the queue grew while the database was busy
    finally:
        await writer.stop(timeout=5)


@pytest.mark.postgres
async def test_spooling_writer_rides_out_a_postgres_restart(
    restartable_postgres: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    engine = create_engine(postgres_url)
    await upgrade_database(engine)
    writer = await spooled_writer(engine, tmp_path, max_batch=25)
    logging.getLogger("proxy.store").setLevel(logging.CRITICAL)
    try:
        submitted = 0
        stopping = asyncio.create_task(asyncio.to_thread(restartable_postgres.stop))
        while not stopping.done() or writer.failed_batches == 0:
            writer.submit(make_record(minutes=submitted))
            submitted += 1
            await asyncio.sleep(0.002)
        await asyncio.to_thread(restartable_postgres.start)
        for _ in range(100):
            writer.submit(make_record(minutes=submitted))
            submitted += 1
            await asyncio.sleep(0.002)
        await wait_until(lambda: writer.written_total == submitted, within=30)
        assert writer.dropped_total == 0
        assert writer.spooled_total > 0
        assert await count(engine) == submitted
        assert (await session_of(engine))["requests"] == submitted
    finally:
        logging.getLogger("proxy.store").setLevel(logging.NOTSET)
        await writer.stop(timeout=5)
        await engine.dispose()
