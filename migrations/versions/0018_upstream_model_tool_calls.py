"""Tool calls in the ``upstream_model`` cells that revision 0014 summed from the records.

Revision 0014 summed every measure of those cells but ``tool_calls``, which revision 0013
had just added: the cells of records stored before 0014 count their tool calls as 0 (the
writer has counted them since). Here each such cell takes the sum of its records, but only
when all of them are still stored, that is when the cell's request count equals theirs; a
cell whose records were partly pruned keeps what it has, as no one can know better.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CUBE = "upstream_model"


def _cell_id(values: tuple[str | None, ...]) -> str:
    # proxy.store.cubes.cell_id: each value length-prefixed in bytes, "n" for null.
    text = "".join("n" if v is None else f"v{len(v.encode())}:{v}" for v in values)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    # The buckets as revision 0014 wrote them, so that they compare equal on either database.
    buckets = {
        "hour": "date_trunc('hour', created_at, 'UTC')"
        if postgres
        else "substr(created_at, 1, 13) || ':00:00.000000'",
        "day": "date_trunc('day', created_at, 'UTC')"
        if postgres
        else "substr(created_at, 1, 10) || ' 00:00:00.000000'",
    }
    repair = sa.text(
        "UPDATE rollups SET tool_calls = :tool_calls WHERE cube = :cube AND grain = :grain "
        "AND bucket_start = :bucket_start AND cell = :cell AND requests = :requests "
        "AND tool_calls <> :tool_calls"
    )
    for grain, bucket in buckets.items():
        # Only cells with tool calls can be short of them: a scan, and few rows back.
        result = bind.execute(
            sa.text(
                f"SELECT {bucket} AS bucket, upstream, model, count(*), sum(tool_calls) "
                f"FROM requests GROUP BY {bucket}, upstream, model HAVING sum(tool_calls) > 0"
            )
        )
        cells = [
            {
                "cube": CUBE,
                "grain": grain,
                "bucket_start": bucket_start,
                "cell": _cell_id((upstream, model)),
                "requests": requests,
                "tool_calls": tool_calls,
            }
            for bucket_start, upstream, model, requests, tool_calls in result
        ]
        for start in range(0, len(cells), 5000):
            bind.execute(repair, cells[start : start + 5000])


def downgrade() -> None:
    # The repaired counts are the true ones: going back keeps them.
    pass
