"""Weekly cells summed from daily ones, for the cubes kept per week.

The writer adds each record to its week's cells as to its day's. A rebuild replaces a day's
cells by sums of raw rows and cannot know what that day had added to the week, so it sums the
week's cells again from the week's seven days, in its own transaction (writers shut out).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.cubes import CUBES, MEASURES, PLAIN_DIMENSIONS, bucket_start
from proxy.store.tables import rollups
from proxy.store.types import UTCDateTime

WEEK: Final = timedelta(days=7)
WEEKLY_CUBES: Final = tuple(cube.name for cube in CUBES if "week" in cube.grains)
_DIMENSIONS: Final = (*PLAIN_DIMENSIONS, "property_name", "property_value")


def week_of(moment: datetime) -> datetime:
    """The start of the UTC week (Monday) holding ``moment``."""
    return bucket_start(moment, "week")


async def sum_week(connection: AsyncConnection, week: datetime) -> int:
    """Replace the weekly cells of the week starting ``week`` by sums of its daily cells;
    returns how many were written."""
    c = rollups.c
    written = 0
    for cube in WEEKLY_CUBES:
        in_cube = (c.cube == cube, c.bucket_start >= week, c.bucket_start < week + WEEK)
        await connection.execute(delete(rollups).where(c.grain == "week", *in_cube))
        dimensions = [c[name] for name in _DIMENSIONS]
        sums = select(
            literal(cube),
            literal("week"),
            literal(week, UTCDateTime()),
            c.cell,
            *dimensions,
            *(func.sum(c[name]) for name in MEASURES),
        ).where(c.grain == "day", *in_cube)
        columns = ["cube", "grain", "bucket_start", "cell", *_DIMENSIONS, *MEASURES]
        result = await connection.execute(
            insert(rollups).from_select(columns, sums.group_by(c.cell, *dimensions))
        )
        written += max(result.rowcount or 0, 0)
    return written
