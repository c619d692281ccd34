"""Rows put into ``requests`` by SQL (an import from another tool, a restore) need only what
such a tool knows: ``id``, ``created_at`` and whatever usage, cost, model or user it has.
The columns it cannot know get server defaults: ``method`` 'POST', ``status_code`` 200,
``stream`` false, ``endpoint`` and ``upstream`` '' (unknown), ``properties`` '{}'.

Only defaults change: no row is rewritten (on SQLite the table is copied, as batch
migrations do).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULTS = {
    "method": "'POST'",
    "status_code": "200",
    "stream": "false",
    "endpoint": "''",
    "upstream": "''",
    "properties": "'{}'",
}


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name, default in DEFAULTS.items():
            batch.alter_column(name, server_default=sa.text(default))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name in DEFAULTS:
            batch.alter_column(name, server_default=None)
