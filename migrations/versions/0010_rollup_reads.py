"""Faster rollup reads: a property index, daily total and property cells, compaction state.

- ``ix_rollups_property`` leads with the property name and value, so that a month of one
  property value's cells (``property=env:prod``) is an index range instead of every cell of
  the cube. Postgres indexes the MD5 of the value (a value of 1,024 characters may not fit a
  B-tree entry) and gets statistics telling the planner that the hash and the value are one
  condition, not two independent ones; SQLite indexes the value itself.
- The ``total`` and ``property`` cubes are now kept per day too: their daily cells are summed
  here from their hourly ones, exactly (the same cells the writer and a rebuild make).
- ``rollup_state.compacted_until``: the daily cells of days before it have been rewritten in
  key order (``proxy.store.compaction``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MEASURES = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "prompt_audio_tokens",
    "completion_audio_tokens",
    "unpriced_requests",
    "error_requests",
    "latency_requests",
    "cost_usd",
    "latency_ms_sum",
)
DIMENSIONS = ("model", "user_id", "key_id", "endpoint", "upstream", "session_id",
              "property_name", "property_value")  # fmt: skip
NEWLY_DAILY = ("total", "property")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("rollup_state", sa.Column("compacted_until", sa.DateTime(timezone=True)))
    day = (
        "date_trunc('day', bucket_start, 'UTC')"
        if postgres
        else "substr(bucket_start, 1, 10) || ' 00:00:00.000000'"
    )
    columns = ", ".join(DIMENSIONS)
    sums = ", ".join(f"sum({m})" for m in MEASURES)
    cubes = ", ".join(f"'{cube}'" for cube in NEWLY_DAILY)
    # Cell keys hash the dimensions only, so a day's cell has its hours' key.
    op.execute(
        f"INSERT INTO rollups (cube, grain, bucket_start, cell, {columns}, {', '.join(MEASURES)})"
        f" SELECT cube, 'day', {day}, cell, {columns}, {sums} FROM rollups"
        f" WHERE grain = 'hour' AND cube IN ({cubes})"
        f" GROUP BY cube, {day}, cell, {columns}"
    )
    if postgres:
        op.execute(
            "CREATE INDEX ix_rollups_property ON rollups"
            " (cube, grain, property_name, md5(property_value), bucket_start)"
            " WHERE property_name IS NOT NULL"
        )
        op.execute(
            "CREATE STATISTICS rollups_property_hash (dependencies)"
            " ON property_value, (md5(property_value)) FROM rollups"
        )
        op.execute("ANALYZE rollups")
    else:
        op.execute(
            "CREATE INDEX ix_rollups_property ON rollups"
            " (cube, grain, property_name, property_value, bucket_start)"
            " WHERE property_name IS NOT NULL"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS rollups_property_hash")
    op.execute("DROP INDEX ix_rollups_property")
    cubes = ", ".join(f"'{cube}'" for cube in NEWLY_DAILY)
    op.execute(f"DELETE FROM rollups WHERE grain = 'day' AND cube IN ({cubes})")
    op.drop_column("rollup_state", "compacted_until")
