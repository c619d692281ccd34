"""Budget actions, burn rates and downgraded requests.

- ``budgets`` gets ``actions``: downgrade or refuse by threshold (``proxy.spend.actions``);
  null on older budgets, which only refuse at their limit.
- ``budget_burn``: what stored records spent per budget and 5 minutes (two days kept), for
  the burn rate and forecast; empty at first, so forecasts start from the upgrade.
- ``requests`` gets ``downgraded_from``: the model the client asked for when a budget action
  sent a cheaper one (then ``model`` is the model sent).

Revision ID: 0016
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("budgets", sa.Column("actions", sa.JSON()))
    op.add_column("requests", sa.Column("downgraded_from", sa.String(256)))
    op.create_table(
        "budget_burn",
        sa.Column("budget_id", sa.String(32), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "usd", sa.Numeric(30, 12).with_variant(sa.BigInteger(), "sqlite"), nullable=False
        ),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("budget_id", "bucket_start", name="pk_budget_burn"),
    )


def downgrade() -> None:
    op.drop_table("budget_burn")
    op.drop_column("requests", "downgraded_from")
    op.drop_column("budgets", "actions")
