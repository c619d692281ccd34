"""Migrations that sum rollup cells: 0010's daily cells of the total and property cubes,
summed from the hourly, and 0018's tool calls of the upstream_model cells 0014 summed."""

from __future__ import annotations

import random
from typing import Any

from alembic import command
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import (
    alembic_config,
    current_revisions,
    head_revision,
    upgrade_database,
)
from proxy.store.rows import write_records
from proxy.store.tables import requests, rollups
from tests.store.rollup_truth import assert_rollups_match_raw_rows, computed_cells
from tests.store.test_rebuild import _varied


async def test_an_upgrade_sums_the_new_daily_cells_from_the_hourly_ones(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        # Written by today's writer, then taken back to revision 0009 (its records and hourly
        # cells stay): the state a writer of 0009 left.
        await upgrade_database(engine)
        await write_records(engine, _varied(400, random.Random(11)))
        computed = await computed_cells(engine)  # of the raw rows, which 0009 reads no better
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0009"))
            await connection.commit()
        async with engine.begin() as connection:
            # What a writer of revision 0009 left: no daily cells for these two cubes.
            await connection.execute(
                delete(rollups).where(
                    rollups.c.grain == "day", rollups.c.cube.in_(["total", "property"])
                )
            )
        async with engine.connect() as connection:
            # Only the key: revision 0009's cells lack the measures added since.
            keys = rollups.c.cube, rollups.c.grain, rollups.c.bucket_start, rollups.c.cell
            stored = {tuple(row) for row in await connection.execute(select(*keys))}
        missing = computed.keys() - stored
        # Later cubes and grains (0014, 0017, 0019): going back past them takes their cells.
        assert {key[:2] for key in missing} == {("total", "day"), ("property", "day"),
                                                ("upstream_model", "hour"),
                                                ("upstream_model", "day"),
                                                ("session_model", "day"),
                                                ("user", "week"),
                                                ("property_user", "week")}  # fmt: skip
        await upgrade_database(engine)
        await assert_rollups_match_raw_rows(engine)
    finally:
        await engine.dispose()


async def _upstream_model_tool_calls(engine: AsyncEngine) -> dict[tuple[Any, ...], int]:
    c = rollups.c
    query = select(c.grain, c.bucket_start, c.cell, c.tool_calls).where(c.cube == "upstream_model")
    async with engine.connect() as connection:
        return {tuple(row[:3]): row[3] for row in await connection.execute(query)}


async def _migrate(engine: AsyncEngine, direction: str, revision: str) -> None:
    step = command.downgrade if direction == "down" else command.upgrade
    async with engine.connect() as connection:
        await connection.run_sync(lambda sync: step(alembic_config(sync), revision))
        await connection.commit()


async def test_an_upgrade_counts_the_tool_calls_revision_0014_left_out(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        # Records with tool calls stored at revision 0015, before the upstream_model cube:
        # 0014 then sums their cells with every measure but tool calls.
        await upgrade_database(engine)
        await write_records(engine, _varied(400, random.Random(5)))
        truth = await _upstream_model_tool_calls(engine)
        assert sum(truth.values()) > 0
        await _migrate(engine, "down", "0015")
        await _migrate(engine, "up", "0017")
        short = await _upstream_model_tool_calls(engine)
        assert short.keys() == truth.keys() and set(short.values()) == {0}

        # One record of some cell with tool calls pruned before 0018: that cell cannot be
        # known any better, and keeps what it has.
        async with engine.begin() as connection:
            pruned = (
                await connection.execute(
                    select(requests.c.id, requests.c.created_at)
                    .where(requests.c.tool_calls > 0)
                    .order_by(requests.c.created_at)
                    .limit(1)
                )
            ).one()
            await connection.execute(delete(requests).where(requests.c.id == pruned.id))
        await _migrate(engine, "up", "head")

        repaired = await _upstream_model_tool_calls(engine)
        kept = {key for key, count in repaired.items() if count != truth[key]}
        hour = pruned.created_at.replace(minute=0, second=0, microsecond=0)
        assert {(grain, start) for grain, start, _ in kept} == {
            ("hour", hour),
            ("day", hour.replace(hour=0)),
        }
        assert all(repaired[key] == 0 for key in kept)
        assert await current_revisions(engine) == [head_revision()]
    finally:
        await engine.dispose()
