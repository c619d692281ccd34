"""``requests.usage_repaired``: the provider's total was smaller than its parts (LiteLLM's
mock embeddings answer ``total_tokens: 0``) and the record holds their sum instead.

Older rows were stored as the provider reported them: not repaired.

Revision ID: 0012
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column("usage_repaired", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )


def downgrade() -> None:
    op.drop_column("requests", "usage_repaired")
