"""Anomalies and daily digests: one row per anomaly found, one per digested day.

- ``anomalies``: a session, user or key whose spend in a window stood out from its peers',
  with the baseline and its top requests; unique by kind, subject and window, so the
  webhook goes out once whichever replica finds it first.
- ``digest_runs``: one row per day digested; the replica that inserts it sends the digest.

Revision ID: 0015
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _money() -> sa.types.TypeEngine[object]:
    # Money: NUMERIC(30, 12) on Postgres, pico-dollars in a BIGINT on SQLite.
    return sa.Numeric(30, 12).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "digest_runs",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("day", name="pk_digest_runs"),
    )
    op.create_table(
        "anomalies",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("peer_group", sa.String(256)),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cost_usd", _money(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("baseline", sa.JSON(), nullable=False),
        sa.Column("top_requests", sa.JSON(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_anomalies"),
        sa.UniqueConstraint(
            "kind", "subject", "window_start", name="uq_anomalies_kind_subject_window_start"
        ),
    )
    op.create_index("ix_anomalies_detected_at", "anomalies", ["detected_at"])


def downgrade() -> None:
    op.drop_index("ix_anomalies_detected_at", table_name="anomalies")
    op.drop_table("anomalies")
    op.drop_table("digest_runs")
