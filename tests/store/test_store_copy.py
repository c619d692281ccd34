"""Postgres takes request rows by COPY; what it stores must not depend on the path taken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store import copy as copy_module
from proxy.store import rows as rows_module
from proxy.store.copy import copy_requests
from proxy.store.queries import UsageQueries
from proxy.store.rows import _insert_requests, is_permanent, record_row, write_records
from proxy.store.tables import requests
from proxy.usage import Usage
from tests.store.factory import make_record, record_id

FULL_USAGE = Usage(
    prompt_tokens=1200,
    completion_tokens=340,
    total_tokens=1540,
    cached_tokens=1024,
    cache_creation_tokens=7,
    reasoning_tokens=256,
    prompt_audio_tokens=3,
    completion_audio_tokens=4,
)

# Each case: the record's fields, and some of the values the stored row must then hold.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "every column set": (
        {
            "stream": True,
            "usage": FULL_USAGE,
            "properties": {"team": "search", "env": "prod"},
            "price_source": "genai-prices",
            "price_version": "0.0.27",
            "estimated_prompt_tokens": 1190,
            "estimated_completion_tokens": 338,
            "estimate_excludes": "images",
            "ttft_ms": 87.25,
            "error": "upstream closed the stream",
            "key_id": "key_0123456789abcdef",
            "cost_usd": Decimal("123456.123456789012"),
        },
        {"cost_usd": Decimal("123456.123456789012"), "reasoning_tokens": 256},
    ),
    "cost rounded half-even to 12 places": (
        {"cost_usd": Decimal("0.0000000000025")},
        # Postgres alone would round half away from zero, to ...003.
        {"cost_usd": Decimal("0.000000000002")},
    ),
    "no usage, no price": (
        {"usage": None, "usage_source": None, "cost_usd": None, "latency_ms": None},
        {"prompt_tokens": None, "total_tokens": None, "cost_usd": None, "latency_ms": None},
    ),
    "unicode and NUL": (
        {
            "model": "gpt\x00-4o ✓",
            "user_id": "Zoë \U0001f9ee",
            "properties": {"k\x00": "v\x00", "emoji": "\U0001f9ee", "quote": 'a"b\\c\n'},
        },
        {
            "model": "gpt\ufffd-4o ✓",
            "user_id": "Zoë \U0001f9ee",
            "properties": {"k\ufffd": "v\ufffd", "emoji": "\U0001f9ee", "quote": 'a"b\\c\n'},
        },
    ),
    "text clipped to its column": (
        {"model": "m" * 1000, "endpoint": "/v1/" + "p" * 1000},
        {"model": "m" * 256, "endpoint": ("/v1/" + "p" * 1000)[:512]},
    ),
    "time in another zone": (
        {"created_at": datetime(2025, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=5)))},
        {"created_at": datetime(2025, 2, 28, 20, 30, tzinfo=UTC)},
    ),
    "naive time taken as UTC": (
        {"created_at": datetime(2025, 3, 1, 1, 30, 0, 123456)},
        {"created_at": datetime(2025, 3, 1, 1, 30, 0, 123456, tzinfo=UTC)},
    ),
}


@pytest.fixture
def copied(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ids of each COPY, in order; none on SQLite."""
    calls: list[list[str]] = []
    copy_rows = copy_module.copy_rows

    async def recording(driver_connection: Any, records: list[tuple[Any, ...]]) -> None:
        calls.append([record[0] for record in records])
        await copy_rows(driver_connection, records)

    monkeypatch.setattr(copy_module, "copy_rows", recording)
    return calls


def twins(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rows of two records alike but for their id."""
    first = make_record(**fields)
    second = make_record(**fields)
    second.id = record_id(second.created_at)
    return record_row(first), record_row(second)


async def stored(engine: AsyncEngine, row_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row as SQLAlchemy reads it, and as Postgres prints each column, without the id."""
    as_text = [sa.cast(column, sa.Text).label(column.name) for column in requests.columns]
    async with engine.connect() as connection:
        values = (await connection.execute(sa.select(requests).filter_by(id=row_id))).one()
        texts = (await connection.execute(sa.select(*as_text).filter_by(id=row_id))).one()
    values_by_name = {k: v for k, v in values._asdict().items() if k != "id"}
    return values_by_name, {k: v for k, v in texts._asdict().items() if k != "id"}


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.select(sa.func.count()).select_from(requests)) or 0)


@pytest.mark.postgres
@pytest.mark.parametrize(("fields", "expected"), list(CASES.values()), ids=list(CASES))
async def test_copy_stores_what_insert_stores(
    postgres_engine: AsyncEngine, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    by_copy, by_insert = twins(fields)
    async with postgres_engine.begin() as connection:
        assert await copy_requests(connection, [by_copy]) == {by_copy["id"]}
        assert await _insert_requests(connection, [by_insert]) == {by_insert["id"]}
    copy_values, copy_texts = await stored(postgres_engine, by_copy["id"])
    insert_values, insert_texts = await stored(postgres_engine, by_insert["id"])
    assert copy_values == insert_values
    assert copy_texts == insert_texts  # the same digits, JSON text and time, not just equal
    assert {name: copy_values[name] for name in expected} == expected


async def test_stored_ids_are_skipped_and_not_counted(
    engine: AsyncEngine, copied: list[list[str]]
) -> None:
    old = [make_record(minutes=i) for i in range(3)]
    new = [make_record(minutes=10 + i) for i in range(3)]
    assert await write_records(engine, old) == 3
    copied.clear()
    assert await write_records(engine, [*new, old[0], old[2]]) == 3
    assert await count(engine) == 6
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None and session["requests"] == 6
    if engine.dialect.name == "postgresql":
        assert copied == [sorted(r.id for r in new)]  # COPY took the new ones only


async def test_a_batch_of_stored_ids_copies_nothing(
    engine: AsyncEngine, copied: list[list[str]]
) -> None:
    records = [make_record(minutes=i) for i in range(3)]
    assert await write_records(engine, records) == 3
    copied.clear()
    assert await write_records(engine, records) == 0
    assert copied == []


async def test_duplicates_in_a_batch_are_stored_once(
    engine: AsyncEngine, copied: list[list[str]]
) -> None:
    first, second = make_record(), make_record(minutes=1)
    assert await write_records(engine, [second, first, second, first]) == 2
    assert await count(engine) == 2
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None and session["requests"] == 2
    if engine.dialect.name == "postgresql":
        assert copied == [sorted([first.id, second.id])]


@pytest.mark.postgres
async def test_an_id_stored_after_the_lookup_falls_back_to_insert(
    postgres_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [make_record(minutes=i) for i in range(4)]
    copy_rows = copy_module.copy_rows
    interrupted = []

    async def another_writer_first(driver_connection: Any, rows: list[tuple[Any, ...]]) -> None:
        # Another replica stores one of the same records between our lookup and our COPY.
        monkeypatch.setattr(copy_module, "copy_rows", copy_rows)
        assert await write_records(postgres_engine, [records[2]]) == 1
        interrupted.append(True)
        await copy_rows(driver_connection, rows)

    monkeypatch.setattr(copy_module, "copy_rows", another_writer_first)
    assert await write_records(postgres_engine, records) == 3
    assert interrupted == [True]
    assert await count(postgres_engine) == 4
    session = await UsageQueries(postgres_engine).get_session("s1")
    assert session is not None
    assert session["requests"] == 4  # each request counted once, by one writer or the other
    assert session["total_tokens"] == 4 * 15


@pytest.mark.postgres
async def test_the_lookup_is_planned_for_its_ids_every_time(postgres_engine: AsyncEngine) -> None:
    # A generic plan made while the table is small scans it whole, and is kept until ANALYZE.
    async with postgres_engine.connect() as connection:
        for minutes in range(8):
            async with connection.begin():
                await copy_requests(connection, [record_row(make_record(minutes=minutes))])
        plans = await connection.execute(
            sa.text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE :lookup"
            ),
            {"lookup": "%FROM requests WHERE id = ANY%"},
        )
        assert plans.all() == [(0, 8)]


@pytest.mark.postgres
async def test_copy_is_undone_with_its_transaction(
    postgres_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(*_: Any) -> None:
        raise RuntimeError("settling failed")

    monkeypatch.setattr(rows_module, "settle_budgets", fail)
    with pytest.raises(RuntimeError, match="settling failed"):
        await write_records(postgres_engine, [make_record(), make_record(minutes=1)])
    assert await count(postgres_engine) == 0


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"cost_usd": 0.1}, id="float money"),
        pytest.param({"cost_usd": Decimal("1e25")}, id="money beyond its column"),
    ],
)
async def test_refused_values_raise_errors_the_writer_gives_up_on(
    engine: AsyncEngine, fields: dict[str, Any]
) -> None:
    with pytest.raises(sa.exc.StatementError) as raised:
        await write_records(engine, [make_record(), make_record(minutes=1, **fields)])
    assert is_permanent(raised.value)
    assert await count(engine) == 0
