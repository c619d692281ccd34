"""Migration 0010: the daily cells of the total and property cubes, summed from the hourly."""

from __future__ import annotations

import random

from alembic import command
from sqlalchemy import delete, select

from proxy.store.engine import create_engine
from proxy.store.migrate import alembic_config, upgrade_database
from proxy.store.rows import write_records
from proxy.store.tables import rollups
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
        # The upstream_model cube came later (0014): going back past it takes its cells too.
        assert {key[:2] for key in missing} == {("total", "day"), ("property", "day"),
                                                ("upstream_model", "hour"),
                                                ("upstream_model", "day"),
                                                ("session_model", "day")}  # fmt: skip
        await upgrade_database(engine)
        await assert_rollups_match_raw_rows(engine)
    finally:
        await engine.dispose()
