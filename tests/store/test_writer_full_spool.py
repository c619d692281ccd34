"""The writer with the database down and the spool's disk full, then the database back.

A database without tables fails every write like one that is down, until it is migrated; the
spool lives on a real tmpfs of 64 KiB (about 85 records), so the disk really fills.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.spool import Spool
from proxy.store.tables import requests
from proxy.store.writer import RecordWriter
from tests.store.factory import identity, make_record
from tests.store.test_store_writer import wait_until
from tests.support.tmpfs import small_tmpfs

Writer = RecordWriter[RequestRecord]
DISK_BYTES = 64 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", DISK_BYTES) as directory:
        yield directory


@pytest.fixture
async def down_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)  # not migrated: every write fails
    yield engine
    await engine.dispose()


async def stored_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(sa.select(requests.c.id))).scalars().all())


async def submit_all(
    writer: Writer, records: list[RequestRecord], pause: float = 0.001
) -> list[RequestRecord]:
    """Submit like a steady stream of requests; the records the writer accepted."""
    accepted = []
    for record in records:
        if writer.submit(record):
            accepted.append(record)
        await asyncio.sleep(pause)
    return accepted


def writer_on(engine: AsyncEngine, spool_dir: Path, **options: Any) -> Writer:
    return RecordWriter(engine, identity, spool=Spool(spool_dir, 1024**3), **options)


async def test_a_full_spool_holds_records_in_memory_until_the_database_is_back(
    down_engine: AsyncEngine, disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.store")
    writer = writer_on(down_engine, disk, queue_size=150, max_batch=20)
    await writer.start()
    try:
        records = [make_record(minutes=i) for i in range(400)]
        accepted = await submit_all(writer, records)
        await wait_until(lambda: writer.stats()["held_records"] > 0 and writer.queue_depth >= 150)
        stats = writer.stats()
        # The disk took what fit, memory holds up to the queue bound, the rest is counted.
        assert 0 < stats["spooled_total"] < 100 and stats["held_records"] > 0
        assert len(accepted) < len(records)
        assert writer.lost == {"unstorable": len(records) - len(accepted)}
        assert not writer.recordable and stats["recordable"] is False
        assert "refused" in caplog.text and "No space left on device" in caplog.text
        writer_logs = [r for r in caplog.records if r.name == "proxy.store.writer"]
        assert all(r.exc_info is None for r in writer_logs)  # no traceback per batch
        lost_lines = [r for r in writer_logs if "lost records" in r.getMessage()]
        assert 1 <= len(lost_lines) < len(records) - len(accepted)  # a line per second at most

        await upgrade_database(down_engine)  # the database is back
        await wait_until(lambda: writer.written_total == len(accepted), within=30)
        assert writer.recordable and writer.queue_depth == 0
        assert writer.stats()["spool_records"] == 0 and writer.stats()["held_records"] == 0
        ids = await stored_ids(down_engine)
        assert sorted(ids) == sorted(r.id for r in accepted)  # all of them, once each
        assert writer.dropped_total == len(records) - len(accepted)  # and no more
    finally:
        await writer.stop(timeout=5)


async def test_once_the_database_is_back_it_takes_new_records_before_the_spool_is_replayed(
    down_engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """New batches must not queue behind a spool that may be full: the database first."""
    caplog.set_level(logging.CRITICAL, logger="proxy.store")
    spool_at_store: dict[str, int] = {}
    writer: Writer

    def on_stored(records: list[RequestRecord]) -> None:
        for record in records:
            spool_at_store[record.id] = writer.stats()["spool_records"]

    # The database comes back whole, as the app's schema gate makes it (``writable``): the
    # migrations rebuild tables on SQLite, and a writer let in half-way would meet them.
    migrated = False
    writer = RecordWriter(
        down_engine,
        identity,
        spool=Spool(tmp_path, 1024**3),
        max_batch=10,
        on_stored=on_stored,
        writable=lambda: migrated,
    )
    await writer.start()
    try:
        backlog = [make_record(minutes=i) for i in range(1000)]
        for record in backlog:
            assert writer.submit(record)
        await wait_until(lambda: writer.stats()["spool_records"] == 1000)
        await upgrade_database(down_engine)
        migrated = True
        await wait_until(lambda: writer.stats()["database_down_seconds"] is None, within=15)
        fresh = make_record(minutes=2000)
        assert writer.submit(fresh)
        await wait_until(lambda: writer.written_total == 1001, within=30)
        # Stored while most of the backlog still waited in the spool (100 replay batches).
        assert spool_at_store[fresh.id] > 500
        assert len(await stored_ids(down_engine)) == 1001 and writer.dropped_total == 0
    finally:
        await writer.stop(timeout=5)


async def test_stop_with_a_full_spool_counts_what_it_cannot_keep(
    down_engine: AsyncEngine, disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every accepted record is either in the spool for the next start or counted as lost."""
    caplog.set_level(logging.CRITICAL, logger="proxy.store")
    first = writer_on(down_engine, disk, queue_size=100, max_batch=20)
    await first.start()
    accepted = await submit_all(first, [make_record(minutes=i) for i in range(300)])
    await first.stop(timeout=2)
    lost_at_stop = first.lost["shutdown"]
    assert lost_at_stop > 0 and first.spooled_total > 0
    assert first.spooled_total + lost_at_stop == len(accepted)
    assert first.dropped_total == 300 - first.spooled_total

    await upgrade_database(down_engine)
    second = writer_on(down_engine, disk)
    await second.start()
    try:
        await wait_until(lambda: second.replayed_total == first.spooled_total, within=15)
        assert len(await stored_ids(down_engine)) == first.spooled_total  # no phantom
    finally:
        await second.stop(timeout=5)
