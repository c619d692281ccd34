"""Tool calls: per record, per session and path node, and in the rollups.

- ``requests`` gets ``tool_calls`` (asked for by the answer) and ``tool_results`` (sent back
  by the request); older rows counted none, so both start at 0.
- ``sessions``, ``session_paths`` and ``rollups`` get ``tool_calls``, their sum: 0 for every
  existing row, as the records they sum have none.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("requests", "tool_calls", sa.Integer),
    ("requests", "tool_results", sa.Integer),
    ("sessions", "tool_calls", sa.BigInteger),
    ("session_paths", "tool_calls", sa.BigInteger),
    ("rollups", "tool_calls", sa.BigInteger),
)


def upgrade() -> None:
    for table, name, kind in _COLUMNS:
        op.add_column(table, sa.Column(name, kind(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    for table, name, _ in reversed(_COLUMNS):
        op.drop_column(table, name)
