from __future__ import annotations

import asyncio
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import (
    alembic_config,
    current_revisions,
    head_revision,
    migrations_directory,
    upgrade_database,
)
from proxy.store.partitions import is_partition
from proxy.store.tables import metadata


def _in_schema(name: str | None, type_: str, _parents: Any) -> bool:
    # The day partitions of ``requests`` (Postgres) are not tables of the schema; the property
    # index of ``rollups`` is an expression on Postgres, made by its migration alone.
    if type_ == "table" and name is not None and is_partition(name):
        return False
    return not (type_ == "index" and name == "ix_rollups_property")


def _differences(target: sa.MetaData) -> Any:
    def compare(connection: Connection) -> Any:
        options = {
            "compare_type": True,
            "compare_server_default": True,
            "include_name": _in_schema,
        }
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


async def test_upgrade_from_an_older_revision(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0005"))
            await connection.commit()
        assert await current_revisions(engine) == ["0005"]
        await upgrade_database(engine)
        assert await current_revisions(engine) == [head_revision()]
        assert await _diff(engine) == []
    finally:
        await engine.dispose()


_START_WITHOUT_ALEMBIC = """
import asyncio, sys
from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database

async def start(url):
    engine = create_engine(url)
    await upgrade_database(engine)
    await engine.dispose()

asyncio.run(start(sys.argv[1]))
print("alembic" in sys.modules)
"""


async def test_an_up_to_date_database_starts_without_importing_alembic(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
    finally:
        await engine.dispose()
    started = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _START_WITHOUT_ALEMBIC, database_url, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await started.communicate()
    assert (started.returncode, output.strip()) == (0, b"False")


def test_head_revision_is_alembics() -> None:
    """The head read from the scripts' source is the one Alembic upgrades to."""
    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def _script(directory: Path, name: str, revision: str, down_revision: str) -> None:
    text = f"revision: str = {revision!r}\ndown_revision: str | None = {down_revision}\n"
    (directory / "versions" / name).write_text(text, encoding="utf-8")


def test_head_revision_follows_merges_and_refuses_branches(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    _script(tmp_path, "a.py", "a", "None")
    _script(tmp_path, "b.py", "b", "'a'")
    _script(tmp_path, "c.py", "c", "'a'")
    assert head_revision(tmp_path) is None  # two heads: b and c
    _script(tmp_path, "d.py", "d", "(\n    'b',\n    'c',\n)")
    assert head_revision(tmp_path) == "d"


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
