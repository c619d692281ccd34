from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import alembic_config, migrations_directory, upgrade_database
from proxy.store.tables import metadata


def _differences(target: sa.MetaData) -> Any:
    def compare(connection: Connection) -> Any:
        options = {"compare_type": True, "compare_server_default": True}
        return compare_metadata(MigrationContext.configure(connection, opts=options), target)

    return compare


async def _diff(engine: AsyncEngine, target: sa.MetaData = metadata) -> Any:
    async with engine.connect() as connection:
        return await connection.run_sync(_differences(target))


async def test_upgrade_from_empty_matches_tables_metadata(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        assert await _diff(engine) == []
        async with engine.connect() as connection:
            version = await connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
        assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    finally:
        await engine.dispose()


async def test_comparison_would_notice_a_schema_difference(database_url: str) -> None:
    """The check above is only worth something if a drift shows up as a difference."""
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        drifted = sa.MetaData()
        for table in metadata.tables.values():
            table.to_metadata(drifted)
        drifted.tables["sessions"].append_column(sa.Column("extra", sa.Integer))
        differences = await _diff(engine, drifted)
        assert [d[0] for d in differences] == ["add_column"]
    finally:
        await engine.dispose()


async def test_upgrade_is_idempotent(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        await upgrade_database(engine)
        assert await _diff(engine) == []
    finally:
        await engine.dispose()


async def test_replicas_starting_together_do_not_race(postgres_url: str) -> None:
    engines = [create_engine(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(upgrade_database(e) for e in engines))
        assert await _diff(engines[0]) == []
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


def test_migrations_come_from_the_checkout() -> None:
    directory = migrations_directory()
    assert (directory / "env.py").is_file()
    assert (directory / "versions" / "0001_initial.py").is_file()


async def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "tally.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as connection:
            journal = await connection.scalar(sa.text("PRAGMA journal_mode"))
            synchronous = await connection.scalar(sa.text("PRAGMA synchronous"))
            busy = await connection.scalar(sa.text("PRAGMA busy_timeout"))
        assert (journal, synchronous, busy) == ("wal", 1, 5000)  # 1 is NORMAL
    finally:
        await engine.dispose()
    assert path.is_file()
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
