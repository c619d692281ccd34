"""Rollup cells: how request rows sum into them (pure), and how the writer keeps them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.cubes import CUBES, MEASURES, cell_id, rollup_rows, smallest_cube
from proxy.store.engine import create_engine
from proxy.store.rows import record_row, write_records
from proxy.store.tables import requests, rollups
from proxy.usage import Usage
from tests.store.factory import T0, make_record


def _rows(*records: Any) -> list[dict[str, Any]]:
    return [record_row(r) for r in records]


def _cells(cells: list[dict[str, Any]], cube: str, grain: str = "hour") -> list[dict[str, Any]]:
    return [c for c in cells if c["cube"] == cube and c["grain"] == grain]


def test_a_record_adds_to_one_cell_per_cube_and_grain_and_one_per_property() -> None:
    record = make_record(properties={"env": "prod", "team": "search"})
    cells = rollup_rows(_rows(record))
    assert len(cells) == sum(len(c.grains) * (2 if c.has_property else 1) for c in CUBES)
    (user,) = _cells(cells, "user", "day")
    assert user["user_id"] == "u1" and user["model"] is None
    assert user["bucket_start"] == T0.replace(hour=0)
    assert sorted(c["property_value"] for c in _cells(cells, "property")) == ["prod", "search"]


def test_sums_are_exact_and_keep_unpriced_errors_and_latency_apart() -> None:
    records = [
        make_record(minutes=1, cost_usd=Decimal("0.1")),
        make_record(minutes=2, cost_usd=Decimal("0.2"), latency_ms=None),
        make_record(minutes=3, cost_usd=None, status_code=502, usage=None),
        make_record(minutes=4, error="client disconnected"),
    ]
    (total,) = _cells(rollup_rows(_rows(*records)), "total")
    assert total["requests"] == 4
    assert total["cost_usd"] == Decimal("0.3000025")
    assert total["unpriced_requests"] == 1
    assert total["error_requests"] == 2
    assert total["latency_requests"] == 3
    assert total["latency_ms_sum"] == pytest.approx(3 * 123.5)
    assert total["prompt_tokens"] == 30  # the record without usage adds nothing


def test_hours_and_days_split_where_the_clock_says() -> None:
    late = T0.replace(hour=23, minute=59, second=59, microsecond=999999)
    records = [make_record(created_at=late), make_record(created_at=late + timedelta(seconds=1))]
    cells = rollup_rows(_rows(*records))
    assert len(_cells(cells, "total", "hour")) == 2
    assert len(_cells(cells, "user", "day")) == 2


def test_null_and_empty_values_are_different_cells() -> None:
    assert cell_id((None,)) != cell_id(("",))
    cells = rollup_rows(_rows(make_record(user_id=None), make_record(user_id="")))
    assert sorted(c["requests"] for c in _cells(cells, "user")) == [1, 1]


def test_taking_rows_out_negates_every_measure() -> None:
    rows = _rows(make_record(properties={"env": "prod"}))
    added, taken = rollup_rows(rows), rollup_rows(rows, sign=-1)
    assert [c["cell"] for c in added] == [c["cell"] for c in taken]
    for plus, minus in zip(added, taken, strict=True):
        assert all(plus[m] == -minus[m] for m in MEASURES)


def test_property_values_read_as_the_usage_api_reads_them() -> None:
    row = record_row(make_record())
    row["properties"] = {"n": 1, "flag": True, "gone": None}  # as a row put in by SQL
    values = {c["property_value"] for c in _cells(rollup_rows([row]), "property")}
    assert values == {"1", "true"}


@pytest.mark.parametrize(
    ("needed", "cube"),
    [
        ((), "total"),
        (("model",), "model"),
        (("user_id", "model"), "model_user"),
        (("property", "user_id"), "property_user"),
        (("upstream",), "upstream"),
    ],
)
def test_the_smallest_cube_covering_a_query_is_chosen(needed: tuple[str, ...], cube: str) -> None:
    chosen = smallest_cube(needed)
    assert chosen is not None and chosen.name == cube


def test_no_cube_holds_selective_combinations() -> None:
    assert smallest_cube(("key_id", "model")) is None
    assert smallest_cube(("property", "endpoint")) is None


async def _stored(engine: AsyncEngine, cube: str, grain: str = "hour") -> list[dict[str, Any]]:
    query = select(rollups).where(rollups.c.cube == cube, rollups.c.grain == grain)
    async with engine.connect() as connection:
        return [dict(r) for r in (await connection.execute(query)).mappings()]


async def test_the_writer_keeps_rollups_and_a_replayed_batch_counts_once(
    engine: AsyncEngine,
) -> None:
    batch = [
        make_record(minutes=n, model=f"m{n % 3}", cost_usd=Decimal("0.000001") * n)
        for n in range(30)
    ]
    assert await write_records(engine, batch) == 30
    assert await write_records(engine, [*batch, make_record(minutes=40)]) == 1
    (total,) = await _stored(engine, "total")
    assert total["requests"] == 31
    assert total["cost_usd"] == Decimal("0.000435") + Decimal("0.0000025")
    models = {c["model"]: c["requests"] for c in await _stored(engine, "model")}
    assert models == {"m0": 10, "m1": 10, "m2": 10, "gpt-4o-mini": 1}


async def test_rollup_costs_are_exact_at_full_money_precision(engine: AsyncEngine) -> None:
    tiny = Decimal("0.000000000001")
    await write_records(engine, [make_record(minutes=n, cost_usd=tiny) for n in range(7)])
    await write_records(engine, [make_record(minutes=10, cost_usd=Decimal("12345.678901234567"))])
    (total,) = await _stored(engine, "total")
    assert total["cost_usd"] == Decimal("12345.678901234574")


@pytest.mark.postgres
async def test_two_replicas_writing_the_same_records_count_them_once(postgres_url: str) -> None:
    from proxy.store.migrate import upgrade_database

    engines = [create_engine(postgres_url) for _ in range(2)]
    try:
        await upgrade_database(engines[0])
        records = [
            make_record(minutes=n % 50, user_id=f"u{n % 7}", usage=Usage(1, 1, 2))
            for n in range(400)
        ]
        halves = [records[:300], records[100:]]
        for _ in range(3):
            await asyncio.gather(
                *(write_records(e, h) for e, h in zip(engines, halves, strict=True))
            )
        async with engines[0].connect() as connection:
            total = await connection.scalar(
                select(func.sum(rollups.c.total_tokens)).where(
                    rollups.c.cube == "user", rollups.c.grain == "hour"
                )
            )
        assert total == 800
    finally:
        for engine in engines:
            await engine.dispose()


async def test_stored_cells_are_what_python_computes_from_the_stored_rows(
    engine: AsyncEngine,
) -> None:
    """Postgres derives the cubes in SQL; the cells, keys included, must be rollup_rows'."""
    records = [
        make_record(
            minutes=n * 37,
            model=["gpt-4o", None, "", "ünï"][n % 4],
            user_id=[None, "u1", "u2"][n % 3],
            session_id=[None, "s/1"][n % 2],
            properties=[{}, {"env": "prod"}, {"env": "dev", "team": "ä b"}][n % 3],
            cost_usd=None if n % 5 == 0 else Decimal(n) / 7,
            latency_ms=None if n % 4 == 0 else 10.25 * n,
        )
        for n in range(60)
    ]
    await write_records(engine, records[:25])
    await write_records(engine, records[20:])
    async with engine.connect() as connection:
        stored = [dict(r) for r in (await connection.execute(select(rollups))).mappings()]
        raw = [dict(r) for r in (await connection.execute(select(requests))).mappings()]
    expected = rollup_rows(raw)

    def key(cell: dict[str, Any]) -> tuple[Any, ...]:
        return cell["cube"], cell["grain"], cell["bucket_start"], cell["cell"]

    assert len(stored) == len(expected)
    for got, want in zip(sorted(stored, key=key), expected, strict=True):
        assert got.keys() == want.keys()
        latency = got.pop("latency_ms_sum"), want.pop("latency_ms_sum")
        assert got == want
        assert latency[0] == pytest.approx(latency[1])
