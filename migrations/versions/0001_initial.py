"""Initial schema: requests and sessions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Written by hand to match ``proxy/store/tables.py`` at this revision; it deliberately does not
import the application's column types, so later changes to them cannot rewrite history.
Money is NUMERIC(30, 12) on Postgres and integer pico-dollars (BIGINT) on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
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
    return sa.Numeric(30, 12).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(512), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("response_model", sa.String(256)),
        sa.Column("upstream", sa.String(1024), nullable=False),
        sa.Column("session_id", sa.String(256)),
        sa.Column("user_id", sa.String(256)),
        sa.Column("properties", sa.JSON(), nullable=False),
        *(sa.Column(name, sa.Integer()) for name in TOKEN_FIELDS),
        sa.Column("usage_source", sa.String(16)),
        sa.Column("cost_usd", _money()),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("ttft_ms", sa.Float()),
        sa.Column("error", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
    )
    for column in ("session_id", "user_id", "model", "created_at"):
        op.create_index(f"ix_requests_{column}", "requests", [column])

    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(256), nullable=False),
        sa.Column("user_id", sa.String(256)),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
            for name in TOKEN_FIELDS
        ),
        sa.Column("cost_usd", _money()),
        sa.Column(
            "unpriced_requests", sa.BigInteger(), nullable=False, server_default=sa.text("0")
        ),
        sa.Column("first_request_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_request_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_last_request_at", "sessions", ["last_request_at"])


def downgrade() -> None:
    op.drop_table("sessions")
    op.drop_table("requests")
