"""A ``session_model`` cube (per day) and an index that finds a session's cells.

- The rollups get the ``session_model`` cube: per day, requests, tokens and cost of each
  session and model, the breakdown ``/usage/sessions`` shows beside each session's totals.
  Its cells are summed here from the stored requests (the same cells the writer and a
  rebuild make); records pruned before this revision are not in them, as they are not in
  a listing's raw-row breakdown either.
- ``ix_rollups_session``: (cube, grain, session id, bucket start) for the cells that have a
  session, so a page of sessions reads its cells, not a day's cells of every session.

Revision ID: 0017
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0012"
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
            "latency_requests", "tool_calls", "cost_usd", "latency_ms_sum")  # fmt: skip
CUBE = "session_model"
SUMS = ", ".join(
    [
        "count(*)",
        *(f"coalesce(sum({name}), 0)" for name in TOKEN_FIELDS),
        "sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)",
        "sum(CASE WHEN status_code >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END)",
        "count(latency_ms)",
        "coalesce(sum(tool_calls), 0)",
        "coalesce(sum(cost_usd), 0)",
        "coalesce(sum(latency_ms), 0)",
    ]
)
"""The measures in order, as ``proxy.store.cubes.record_measures`` adds them per row."""

COLUMNS = ", ".join(["cube", "grain", "bucket_start", "cell", "session_id", "model", *MEASURES])


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _sum_in_postgres()
    else:
        _sum_in_python()
    op.create_index(
        "ix_rollups_session",
        "rollups",
        ["cube", "grain", "session_id", "bucket_start"],
        postgresql_where=sa.text("session_id IS NOT NULL"),
        sqlite_where=sa.text("session_id IS NOT NULL"),
    )


def _sum_in_postgres() -> None:
    # proxy.store.cubes.cell_id in SQL: each value length-prefixed in bytes, "n" for null.
    parts = [
        f"CASE WHEN {name} IS NULL THEN 'n' ELSE 'v' || octet_length({name}) || ':' || {name} END"
        for name in ("session_id", "model")
    ]
    day = "date_trunc('day', created_at, 'UTC')"
    op.execute(
        f"INSERT INTO rollups ({COLUMNS}) "
        f"SELECT '{CUBE}', 'day', {day}, md5({' || '.join(parts)}), session_id, model, {SUMS} "
        f"FROM requests GROUP BY {day}, session_id, model"
    )


def _cell_id(values: tuple[str | None, ...]) -> str:
    # proxy.store.cubes.cell_id: each value length-prefixed in bytes, "n" for null.
    text = "".join("n" if v is None else f"v{len(v.encode())}:{v}" for v in values)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _sum_in_python() -> None:
    bind = op.get_bind()
    day = "substr(created_at, 1, 10) || ' 00:00:00.000000'"
    result = bind.execute(
        sa.text(
            f"SELECT {day} AS bucket, session_id, model, {SUMS} FROM requests "
            f"GROUP BY {day}, session_id, model"
        )
    )
    names = ["cube", "grain", "bucket_start", "cell", "session_id", "model", *MEASURES]
    insert = sa.text(
        f"INSERT INTO rollups ({COLUMNS}) VALUES ({', '.join(':' + n for n in names)})"
    )
    batch: list[dict[str, Any]] = []
    for bucket_start, session_id, model, *measures in result:
        cell = {
            "cube": CUBE,
            "grain": "day",
            "bucket_start": bucket_start,
            "cell": _cell_id((session_id, model)),
            "session_id": session_id,
            "model": model,
        }
        batch.append({**cell, **dict(zip(MEASURES, measures, strict=True))})
        if len(batch) >= 5000:
            bind.execute(insert, batch)
            batch = []
    if batch:
        bind.execute(insert, batch)


def downgrade() -> None:
    op.drop_index("ix_rollups_session", "rollups")
    op.execute(sa.text(f"DELETE FROM rollups WHERE cube = '{CUBE}'"))
