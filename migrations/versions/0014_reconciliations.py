"""Reconciliation with the provider's bill: stored comparisons, the job's schedule, and an
``upstream_model`` cube.

- ``reconciliations``: per provider, bucket width and bucket, the newest comparison with the
  provider's usage and cost report (``proxy.reconcile``), final once the bucket is closed.
- ``reconcile_runs``: when each provider's periodic reconciliation is due next.
- The rollups get the ``upstream_model`` cube (per hour and per day), summed here from the
  stored requests: the same cells the writer and a rebuild make.

Revision ID: 0014
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0015"
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
MEASURES = ("requests", *TOKEN_FIELDS, "unpriced_requests", "error_requests",
            "latency_requests", "cost_usd", "latency_ms_sum")  # fmt: skip
CUBE = "upstream_model"


def _money() -> sa.types.TypeEngine[object]:
    # Money: NUMERIC(30, 12) on Postgres, pico-dollars in a BIGINT on SQLite.
    return sa.Numeric(30, 12).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reconciliations",
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("bucket_width", sa.String(4), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bucket_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("measure", sa.String(16), nullable=False),
        sa.Column("difference_pct", sa.Float()),
        sa.Column("billed_cost_usd", _money()),
        sa.Column("metered_cost_usd", _money()),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("bypass", sa.Boolean(), nullable=False),
        sa.Column("comparison", sa.JSON(), nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint(
            "provider", "bucket_width", "bucket_start", name="pk_reconciliations"
        ),
    )
    op.create_table(
        "reconcile_runs",
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text()),
        sa.PrimaryKeyConstraint("provider", name="pk_reconcile_runs"),
    )
    _sum_upstream_model_cells()


def _cell_id(values: tuple[str | None, ...]) -> str:
    # proxy.store.cubes.cell_id: each value length-prefixed in bytes, "n" for null.
    text = "".join("n" if v is None else f"v{len(v.encode())}:{v}" for v in values)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _sum_upstream_model_cells() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    hour = (
        "date_trunc('hour', created_at, 'UTC')"
        if postgres
        else "substr(created_at, 1, 13) || ':00:00.000000'"
    )
    day = (
        "date_trunc('day', created_at, 'UTC')"
        if postgres
        else "substr(created_at, 1, 10) || ' 00:00:00.000000'"
    )
    sums = ", ".join(
        [
            "count(*)",
            *(f"coalesce(sum({name}), 0)" for name in TOKEN_FIELDS),
            "sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)",
            "sum(CASE WHEN status_code >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END)",
            "count(latency_ms)",
            "coalesce(sum(cost_usd), 0)",
            "coalesce(sum(latency_ms), 0)",
        ]
    )
    columns = ", ".join(["cube", "grain", "bucket_start", "cell", "upstream", "model", *MEASURES])
    marks = ", ".join(f":{name}" for name in ["cube", "grain", "bucket_start", "cell",
                                              "upstream", "model", *MEASURES])  # fmt: skip
    insert = sa.text(f"INSERT INTO rollups ({columns}) VALUES ({marks})")
    for grain, bucket in (("hour", hour), ("day", day)):
        result = bind.execute(
            sa.text(
                f"SELECT {bucket} AS bucket, upstream, model, {sums} FROM requests "
                f"GROUP BY {bucket}, upstream, model"
            )
        )
        batch: list[dict[str, Any]] = []
        for bucket_start, upstream, model, *measures in result:
            batch.append(
                {
                    "cube": CUBE,
                    "grain": grain,
                    "bucket_start": bucket_start,
                    "cell": _cell_id((upstream, model)),
                    "upstream": upstream,
                    "model": model,
                    **dict(zip(MEASURES, measures, strict=True)),
                }
            )
            if len(batch) >= 5000:
                bind.execute(insert, batch)
                batch = []
        if batch:
            bind.execute(insert, batch)


def downgrade() -> None:
    op.execute(sa.text(f"DELETE FROM rollups WHERE cube = '{CUBE}'"))
    op.drop_table("reconcile_runs")
    op.drop_table("reconciliations")
