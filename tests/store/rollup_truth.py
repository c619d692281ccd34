"""The rollups as they should be: recomputed from every raw row, to compare the stored ones."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.cubes import MEASURES, rollup_rows
from proxy.store.tables import requests, rollups

Cells = dict[tuple[Any, ...], dict[str, Any]]


def _keyed(cells: list[dict[str, Any]]) -> Cells:
    return {(c["cube"], c["grain"], c["bucket_start"], c["cell"]): c for c in cells}


async def stored_cells(engine: AsyncEngine) -> Cells:
    """Every stored rollup cell, by its key."""
    async with engine.connect() as connection:
        rows = (await connection.execute(select(rollups))).mappings()
        return _keyed([dict(r) for r in rows])


async def computed_cells(engine: AsyncEngine) -> Cells:
    """The cells ``rollup_rows`` makes of every stored raw row."""
    async with engine.connect() as connection:
        rows = (await connection.execute(select(requests))).mappings()
        return _keyed(rollup_rows([dict(r) for r in rows]))


def assert_same_cells(stored: Cells, expected: Cells) -> None:
    """Equal cell for cell, measure for measure (the float latency sum up to rounding)."""
    assert stored.keys() == expected.keys()
    for key, cell in expected.items():
        have = stored[key]
        for name in MEASURES:
            if name == "latency_ms_sum":
                assert have[name] == pytest.approx(cell[name], rel=1e-9), (key, name)
            else:
                assert have[name] == cell[name], (key, name)
        dimensions = [n for n in cell if n not in MEASURES]
        assert {n: have[n] for n in dimensions} == {n: cell[n] for n in dimensions}


async def assert_rollups_match_raw_rows(engine: AsyncEngine) -> None:
    """The stored rollups are exactly what the raw rows sum to."""
    assert_same_cells(await stored_cells(engine), await computed_cells(engine))
