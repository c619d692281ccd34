"""The scale benchmarks' fill stores exactly what the writer would have stored.

``benchmarks/query_scale.py`` bypasses the writer for speed (COPY of generated rows, then
``sessions`` by one INSERT ... SELECT): its figures only mean something if the database it
measures is the one the writer makes from the same records. These tests fill one database
each way and compare every row of ``requests`` and ``sessions``.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from proxy.store.rows import write_records
from proxy.store.tables import requests, sessions
from tests.conftest import migrated_engine
from tests.support.postgres import PostgresServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from scale_db import fill
from synthetic import Shape, Synthetic, to_record

SHAPE = Shape(
    records=3_000, end=datetime(2026, 11, 30, 12, 34, 56, 789_000, tzinfo=UTC), days=3,
    sessions=120, users=40, keys=5,
)  # fmt: skip


def second_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if database_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path / 'writer.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url(server.create_database())


async def table_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    async with migrated_engine(url) as engine, engine.connect() as connection:
        tables = {}
        for table, key in ((requests, requests.c.id), (sessions, sessions.c.session_id)):
            result = await connection.execute(select(table).order_by(key))
            tables[table.name] = [dict(row) for row in result.mappings()]
        return tables


def test_fill_stores_what_the_writer_stores(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fill(database_url, SHAPE, jobs=1, progress=lambda _: None)  # runs its own event loops
    writer_url = second_url(database_url, tmp_path, request)
    records = [to_record(row) for rows in Synthetic(SHAPE).hours() for row in rows]

    async def write() -> None:
        async with migrated_engine(writer_url) as engine:
            for start in range(0, len(records), 500):
                batch = records[start : start + 500]
                assert await write_records(engine, batch) == len(batch)

    asyncio.run(write())
    filled, written = asyncio.run(table_rows(database_url)), asyncio.run(table_rows(writer_url))
    assert len(filled["requests"]) == SHAPE.records
    assert filled["requests"] == written["requests"]
    # Latency is a float sum: the writer adds batch by batch, the fill in one SUM.
    filled_latency = [row.pop("latency_ms") for row in filled["sessions"]]
    written_latency = [row.pop("latency_ms") for row in written["sessions"]]
    assert filled["sessions"] == written["sessions"]
    assert filled_latency == pytest.approx(written_latency, rel=1e-9)
    assert 0 < len(filled["sessions"]) <= SHAPE.sessions


def test_synthetic_rows_are_reproducible_and_varied() -> None:
    first, again = Synthetic(SHAPE), Synthetic(SHAPE)
    rows = [row for hour in first.hours() for row in hour]
    assert rows == [row for hour in again.hours() for row in hour]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert all(SHAPE.end.timestamp() - 3 * 86400 <= r["created_at"].timestamp() for r in rows)
    assert {r["properties"].split('"')[3] for r in rows} == {"prod", "staging", "dev"}
    assert any(r["cost_usd"] is None and r["error"] is None for r in rows)  # unpriced
    assert any(r["error"] is not None and r["prompt_tokens"] is None for r in rows)
    assert len({r["model"] for r in rows}) > 10
    assert len({r["endpoint"] for r in rows}) >= 4
