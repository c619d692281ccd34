"""Partitions: ``requests`` by day of ``created_at`` on Postgres; key (id, created_at).

Postgres: the table is rebuilt as one partitioned by range of ``created_at``, one partition
per UTC day (``requests_pYYYYMMDD``) for each day that holds records and for today and the
next 7 days, plus ``requests_default`` for any other day. The rows are copied over in one
statement (the README gives the time this takes per million rows). A partitioned table's
primary key must include its partition key, hence (id, created_at); SQLite gets the same key
so that one schema, and one ``ON CONFLICT`` target, serve both.

The listing indexes end in ``id``, the order ``/usage/requests`` pages in, so that one model's
(user's, key's, session's) newest records are the end of an index range in each partition.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AHEAD_DAYS = 7
OLD_INDEXES = {
    "ix_requests_session_id": ["session_id"],
    "ix_requests_user_id": ["user_id"],
    "ix_requests_model": ["model"],
    "ix_requests_created_at": ["created_at"],
    "ix_requests_key_id": ["key_id"],
}
NEW_INDEXES = {
    "ix_requests_session_id_id": ["session_id", "id"],
    "ix_requests_user_id_id": ["user_id", "id"],
    "ix_requests_model_id": ["model", "id"],
    "ix_requests_key_id_id": ["key_id", "id"],
    "ix_requests_created_at": ["created_at"],
}
# Everything a table made LIKE requests should share with it, apart from its indexes.
_LIKE = (
    "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS "
    "INCLUDING GENERATED INCLUDING IDENTITY"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _partition()
    else:
        _rekey_sqlite(NEW_INDEXES, OLD_INDEXES, ["id", "created_at"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _unpartition()
    else:
        _rekey_sqlite(OLD_INDEXES, NEW_INDEXES, ["id"])


def _partition() -> None:
    op.execute("ALTER TABLE requests RENAME TO requests_unpartitioned")
    for name in OLD_INDEXES:
        op.execute(f"DROP INDEX {name}")
    op.execute("ALTER TABLE requests_unpartitioned DROP CONSTRAINT pk_requests")
    op.execute(
        f"CREATE TABLE requests (LIKE requests_unpartitioned {_LIKE}) "
        "PARTITION BY RANGE (created_at)"
    )
    op.execute("CREATE TABLE requests_default PARTITION OF requests DEFAULT")
    for day in _days_to_create():
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        op.execute(
            f"CREATE TABLE requests_p{day:%Y%m%d} PARTITION OF requests "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    # Keys and indexes after the copy: building them once is faster than growing them.
    op.execute("INSERT INTO requests SELECT * FROM requests_unpartitioned")
    op.execute("DROP TABLE requests_unpartitioned")
    op.execute("ALTER TABLE requests ADD CONSTRAINT pk_requests PRIMARY KEY (id, created_at)")
    for name, columns in NEW_INDEXES.items():
        op.create_index(name, "requests", columns)
    # Autovacuum analyzes the partitions in time, never the partitioned table itself.
    op.execute("ANALYZE requests")


def _days_to_create() -> list[date]:
    """Each UTC day that holds records, and today and the days ahead."""
    held = op.get_bind().execute(
        sa.text("SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM requests_unpartitioned")
    )
    today = datetime.now(UTC).date()
    ahead = {today + timedelta(days=n) for n in range(AHEAD_DAYS + 1)}
    return sorted(ahead | set(held.scalars()))


def _unpartition() -> None:
    op.execute("ALTER TABLE requests RENAME TO requests_partitioned")
    op.execute("ALTER TABLE requests_partitioned RENAME CONSTRAINT pk_requests TO pk_old")
    for name in NEW_INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_old")
    op.execute(f"CREATE TABLE requests (LIKE requests_partitioned {_LIKE})")
    op.execute("INSERT INTO requests SELECT * FROM requests_partitioned")
    op.execute("DROP TABLE requests_partitioned")  # and every partition with it
    op.execute("ALTER TABLE requests ADD CONSTRAINT pk_requests PRIMARY KEY (id)")
    for name, columns in OLD_INDEXES.items():
        op.create_index(name, "requests", columns)


def _rekey_sqlite(
    indexes: dict[str, list[str]], old_indexes: dict[str, list[str]], key: list[str]
) -> None:
    for name in old_indexes:
        op.drop_index(name, "requests")
    # SQLite cannot change a primary key in place: batch mode copies the table.
    with op.batch_alter_table("requests", recreate="always") as batch:
        batch.drop_constraint("pk_requests", type_="primary")
        batch.create_primary_key("pk_requests", key)
    for name, columns in indexes.items():
        op.create_index(name, "requests", columns)
