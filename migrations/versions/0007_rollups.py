"""Rollups: per-hour and per-day sums by cube, kept by the writer with the records.

A database that already holds records gets ``rollup_state.complete = false``: summaries
read raw rows until ``tallyproxy rollups rebuild`` has summed the existing records.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "prompt_audio_tokens",
    "completion_audio_tokens",
)


def _money() -> sa.types.TypeEngine[object]:
    # Money: NUMERIC(30, 12) on Postgres, pico-dollars in a BIGINT on SQLite.
    return sa.Numeric(30, 12).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("cube", sa.String(16), nullable=False),
        sa.Column("grain", sa.String(4), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cell", sa.String(32), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("user_id", sa.String(256)),
        sa.Column("key_id", sa.String(32)),
        sa.Column("endpoint", sa.String(512)),
        sa.Column("upstream", sa.String(1024)),
        sa.Column("session_id", sa.String(256)),
        sa.Column("property_name", sa.Text()),
        sa.Column("property_value", sa.Text()),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in TOKEN_FIELDS),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("error_requests", sa.BigInteger(), nullable=False),
        sa.Column("latency_requests", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", _money(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("cube", "grain", "bucket_start", "cell", name="pk_rollups"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Cells are updated in place batch after batch: room on the page keeps those
        # updates HOT (no new index entries, no index bloat).
        op.execute("ALTER TABLE rollups SET (fillfactor = 70)")
    op.create_table(
        "rollup_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_rollup_state"),
    )
    op.execute(
        "INSERT INTO rollup_state (id, complete) SELECT 1, NOT EXISTS (SELECT 1 FROM requests)"
    )


def downgrade() -> None:
    op.drop_table("rollup_state")
    op.drop_table("rollups")
