"""Weekly cells of the ``user`` and ``property_user`` cubes, summed from their daily cells.

A month by user (for one property value) read 30,000 daily cells; from weeks (Monday to
Monday, UTC) it reads 4 weeks and the days left at the edges, some 6,000. The writer keeps
the weekly cells from this revision on; here they are summed from the daily cells, which
hold every record the rollups count (pruned ones included).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CUBES = ("user", "property_user")
DIMENSIONS = ("model", "user_id", "key_id", "endpoint", "upstream", "session_id",
              "property_name", "property_value")  # fmt: skip
MEASURES = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
            "cache_creation_tokens", "reasoning_tokens", "prompt_audio_tokens",
            "completion_audio_tokens", "unpriced_requests", "error_requests",
            "latency_requests", "tool_calls", "cost_usd", "latency_ms_sum")  # fmt: skip


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        week = "date_trunc('week', bucket_start, 'UTC')"
    else:
        # The Monday on or before the day, as SQLite stores a UTC datetime.
        week = "date(substr(bucket_start, 1, 10), '-6 days', 'weekday 1') || ' 00:00:00.000000'"
    dimensions = ", ".join(DIMENSIONS)
    cubes = ", ".join(f"'{cube}'" for cube in CUBES)
    op.execute(
        f"INSERT INTO rollups (cube, grain, bucket_start, cell, {dimensions}, "
        f"{', '.join(MEASURES)}) "
        f"SELECT cube, 'week', {week}, cell, {dimensions}, "
        f"{', '.join(f'sum({m})' for m in MEASURES)} FROM rollups "
        f"WHERE cube IN ({cubes}) AND grain = 'day' "
        f"GROUP BY cube, {week}, cell, {dimensions}"
    )


def downgrade() -> None:
    op.execute("DELETE FROM rollups WHERE grain = 'week'")
