"""Apply pending Alembic migrations from inside the application, without an alembic.ini."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

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
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def upgrade_database(engine: AsyncEngine) -> None:
    """Bring the database schema to the newest revision; a no-op when it is already there.

    On Postgres a session advisory lock serialises the upgrade, so replicas that start
    together wait for the first one instead of racing to create the same tables. The whole
    upgrade is one transaction on Postgres (transactional DDL).
    """
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
    log.info("database schema is up to date (%s)", engine.url.render_as_string(hide_password=True))
