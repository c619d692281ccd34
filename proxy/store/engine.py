"""Create the async engine with settings suited to each backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 5000

SERVER_SETTINGS = {
    "application_name": "tallyproxy",
    # asyncpg prepares every statement, and Postgres gives a prepared statement a generic
    # plan after five runs, kept until the next ANALYZE: planned while a table was small,
    # the writer's lookup of stored ids became a full scan per id. Custom plans see the
    # values. Sent with the connection's start-up, so it costs no round trip.
    "plan_cache_mode": "force_custom_plan",
}


def create_engine(
    url: str, *, application_name: str = "tallyproxy", connect_timeout: float | None = None
) -> AsyncEngine:
    """An ``AsyncEngine`` for ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URLs.

    SQLite: the parent directory of the file is created; every connection uses WAL (readers
    do not block the writer), ``synchronous=NORMAL`` (durable at checkpoints, fast commits)
    and a busy timeout so a second process waits for the write lock instead of failing.
    Postgres: a bounded pool whose connections are checked before use, since a replica may
    outlive a database failover; ``application_name`` names its sessions in
    ``pg_stat_activity``, and ``connect_timeout`` bounds a connection attempt (asyncpg's
    default is 60 s).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_timeout=10,
        pool_recycle=1800,
        pool_pre_ping=True,
        connect_args=_connect_args(application_name, connect_timeout),
    )


def _connect_args(application_name: str, connect_timeout: float | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "server_settings": {**SERVER_SETTINGS, "application_name": application_name}
    }
    if connect_timeout is not None:
        args["timeout"] = connect_timeout
    return args


def _sqlite_engine(url: str, database: str | None) -> AsyncEngine:
    in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
    if not in_memory and database is not None:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    return engine
