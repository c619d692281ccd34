"""Local estimates beside provider usage (drift) and what an estimate left out.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("estimated_prompt_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("estimated_completion_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("estimate_excludes", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("estimate_excludes")
        batch.drop_column("estimated_completion_tokens")
        batch.drop_column("estimated_prompt_tokens")
