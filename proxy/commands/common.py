"""Flags and argument types shared by the subcommands."""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from proxy.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from proxy.store.queries import UsageQueries
    from proxy.store.replica import Reads

Store = TypeVar("Store")

_AGE = re.compile(r"(\d+)([mhd])")
_AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (or TALLYPROXY_CONFIG)")
    parser.add_argument(
        "--database-url", help="sqlite+aiosqlite:///file.db or postgresql+asyncpg://..."
    )


def read_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-read-url",
        help="a Postgres streaming replica to read from: postgresql+asyncpg://... "
        "(or TALLYPROXY_DATABASE_READ_URL)",
    )


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist yet, else None (Postgres, memory).

    A command that reads or changes records must not create an empty database and report
    zeros: run from another folder, the default ``./tallyproxy.db`` is a new file.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # the command's own connect says what is wrong with it
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path.resolve()


def database_trouble(exc: BaseException, url: str) -> str | None:
    """One line for a database that cannot be reached or used; None when ``exc`` is
    something else (a bug, which keeps its traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    from proxy.banner import redacted_url
    from proxy.store.availability import error_reason, is_unreachable

    network = (ConnectionError, TimeoutError, socket.gaierror)
    if not isinstance(exc, (SQLAlchemyError, *network)) and not _from_driver(exc):
        return None
    backend = "sqlite" if url.startswith("sqlite") else "postgresql"
    shown = redacted_url(url)
    if is_unreachable(exc, backend):
        return (
            f"cannot reach the database {shown}: {error_reason(exc)}; is it running, and "
            "is database.url (--database-url, TALLYPROXY_DATABASE_URL) right?"
        )
    return f"cannot use the database {shown}: {error_reason(exc)}; check database.url"


def _from_driver(exc: BaseException) -> bool:
    # asyncpg raises some errors of its own (a refused password) outside SQLAlchemy's wrapping.
    return type(exc).__module__.split(".")[0] == "asyncpg"


def moment(text: str) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00:00Z`` (naive = UTC) or an age such as ``24h``."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return datetime.now(UTC) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO date/time nor an age like 24h"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@asynccontextmanager
async def migrated_database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The configured database, migrated to the newest schema, closed afterwards."""
    from proxy.store.engine import create_engine
    from proxy.store.migrate import upgrade_database

    engine = create_engine(settings.database.url)
    try:
        await upgrade_database(engine)
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def reading_database(settings: Settings) -> AsyncIterator[Reads[UsageQueries]]:
    """Usage queries for a command that only reads: on ``database.read_url`` when it is no
    more than ``database.read_max_lag_seconds`` behind (measured once, now), else on the
    migrated primary. A replica lagging or down is one log line, not a failure."""
    from proxy.store.engine import create_engine
    from proxy.store.queries import UsageQueries
    from proxy.store.replica import Reads, ReplicaMonitor

    async with migrated_database(settings) as primary:
        database = settings.database
        if database.read_url is None:
            yield Reads(UsageQueries(primary))
            return
        replica = create_engine(
            database.read_url, application_name="tallyproxy-report", connect_timeout=5.0
        )
        try:
            monitor = ReplicaMonitor(primary, replica, database.read_max_lag_seconds)
            await monitor.check()
            yield Reads(UsageQueries(primary), UsageQueries(replica), monitor)
        finally:
            await replica.dispose()


def store_command(
    make_store: Callable[[AsyncEngine], Store],
    action: Callable[[Store, argparse.Namespace], Awaitable[int]],
) -> Callable[[Settings, argparse.Namespace], int]:
    """A subcommand's ``run``: ``action`` on a store over the migrated database."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def act() -> int:
            async with migrated_database(settings) as engine:
                return await action(make_store(engine), args)

        return asyncio.run(act())

    return run
