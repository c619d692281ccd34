"""Apply pending Alembic migrations from inside the application, without an alembic.ini.

Alembic (about 10 MB resident with Mako) is imported only when the database is behind: a
start-up against an up-to-date database reads ``alembic_version`` and compares it with the
head revision read from the scripts' source.
"""

from __future__ import annotations

import ast
import contextlib
import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x74616C6C796D6967  # b"tallymig": any constant shared by all replicas


def migrations_directory() -> Path:
    """Where the migration scripts are: inside the installed wheel, else the source checkout."""
    packaged = Path(str(resources.files("proxy") / "_migrations"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` built in code; ``connection`` is handed to ``migrations/env.py``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision(directory: Path | None = None) -> str | None:
    """The revision no script revises, read from the scripts' source without importing Alembic.

    None when there is not exactly one such revision: Alembic then decides what to do.
    """
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in _scripts(directory or migrations_directory()):
        found = _identifiers(script)
        if not isinstance(found.get("revision"), str):
            return None
        revisions.add(found["revision"])
        revised.update(_as_tuple(found.get("down_revision")))
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def _scripts(directory: Path) -> list[Path]:
    # The files Alembic loads: sources in versions/, minus packages and editor lock files.
    versions = directory / "versions"
    return [p for p in versions.glob("*.py") if not p.name.startswith(("__init__", ".#"))]


def _identifiers(script: Path) -> dict[str, Any]:
    """The literal module-level ``revision`` and ``down_revision`` of a script."""
    found: dict[str, Any] = {}
    for statement in ast.parse(script.read_bytes(), filename=str(script)).body:
        match statement:
            case (
                ast.Assign(targets=[ast.Name(id=name)], value=value)
                | ast.AnnAssign(target=ast.Name(id=name), value=ast.expr() as value)
            ) if name in ("revision", "down_revision"):
                with contextlib.suppress(ValueError):  # not a literal: left to Alembic
                    found[name] = ast.literal_eval(value)
    return found


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


async def current_revisions(engine: AsyncEngine) -> list[str] | None:
    """The revisions stamped in ``alembic_version``, or None when the table cannot be read."""
    async with engine.connect() as connection:
        try:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
        except DBAPIError:  # no table yet: a new database
            return None
        return [row[0] for row in rows]


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


async def upgrade_database(engine: AsyncEngine) -> str | None:
    """Bring the database schema to the newest revision; a no-op when it is already there.

    Returns the revision the database is at now.

    On Postgres a session advisory lock serialises the upgrade, so replicas that start
    together wait for the first one instead of racing to create the same tables. The whole
    upgrade is one transaction on Postgres (transactional DDL). The check before it takes no
    lock: a revision at head was stamped by a finished upgrade.
    """
    head = head_revision()
    if head is None or await current_revisions(engine) != [head]:
        await _locked_upgrade(engine)
    log.info("database schema is up to date (%s)", engine.url.render_as_string(hide_password=True))
    if head is not None:
        return head
    revisions = await current_revisions(engine)
    return ", ".join(revisions) if revisions else None


async def _locked_upgrade(engine: AsyncEngine) -> None:
    postgres = engine.dialect.name == "postgresql"
    async with engine.connect() as connection:
        if postgres:
            await connection.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        try:
            await connection.run_sync(_upgrade)
            await connection.commit()
        finally:
            if postgres:
                await connection.rollback()
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
                await connection.commit()
