"""Session paths and names, trace context, errors and latency per session.

- ``requests`` gets ``session_path``, ``session_name`` (X-Session-Path / X-Session-Name)
  and ``trace_id``, ``span_id`` (the caller's traceparent); older rows have none.
- ``sessions`` gets ``name`` (last seen), ``errors`` (an error status or noted error) and
  ``latency_ms`` (their sum), the last two filled from the stored requests.
- ``session_paths``: per session and path node, the totals of that node's own requests.
  Older requests have no path: they stay with the session's root.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
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

# As the rollups count errors (``proxy.store.cubes``): an error status, or an error noted
# (a stream cut short, an upstream gone).
_FAILED = "(r.status_code >= 400 OR r.error IS NOT NULL)"


def _money() -> sa.types.TypeEngine[object]:
    # Money: NUMERIC(30, 12) on Postgres, pico-dollars in a BIGINT on SQLite.
    return sa.Numeric(30, 12).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    for name, length in (
        ("session_path", 256),
        ("session_name", 256),
        ("trace_id", 32),
        ("span_id", 16),
    ):
        op.add_column("requests", sa.Column(name, sa.String(length)))
    op.add_column("sessions", sa.Column("name", sa.String(256)))
    op.add_column(
        "sessions",
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "sessions",
        sa.Column("latency_ms", sa.Float(), nullable=False, server_default=sa.text("0")),
    )
    op.execute(
        "UPDATE sessions SET "
        f"errors = (SELECT count(*) FROM requests r WHERE r.session_id = sessions.session_id "
        f"AND {_FAILED}), "
        "latency_ms = (SELECT coalesce(sum(r.latency_ms), 0) FROM requests r "
        "WHERE r.session_id = sessions.session_id)"
    )
    counts = [
        sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        for name in ("requests", *TOKEN_FIELDS)
    ]
    op.create_table(
        "session_paths",
        sa.Column("session_id", sa.String(256), nullable=False),
        sa.Column("path", sa.String(256), nullable=False),
        *counts,
        sa.Column("cost_usd", _money()),
        sa.Column(
            "unpriced_requests", sa.BigInteger(), nullable=False, server_default=sa.text("0")
        ),
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("latency_ms", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("first_request_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_request_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "path", name="pk_session_paths"),
    )


def downgrade() -> None:
    op.drop_table("session_paths")
    for name in ("latency_ms", "errors", "name"):
        op.drop_column("sessions", name)
    for name in ("span_id", "trace_id", "session_name", "session_path"):
        op.drop_column("requests", name)
