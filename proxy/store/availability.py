"""The database at start-up: migrated now, or later once it is reachable.

Start-up tries the migration once. A database that is not there yet (connection refused,
an unknown host name, a timeout, a server still starting up or out of connections) is not
a reason to stop: the proxy serves, the record writer spools, and :class:`Schema` retries
the migration in the background with backoff until it succeeds. Everything else (a wrong
password, a database that does not exist, an SQLite file that cannot be opened) is a
configuration error, which a retry will not fix: start-up stops with one line that says so.

The writer asks :attr:`Schema.ready` before it writes: records never go into a database
whose tables are not there yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.rebuild import incomplete_notice

log = logging.getLogger(__name__)

DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, OSError)
"""What a failed database call raises: SQLAlchemy's errors, and the network's (asyncpg
connects outside SQLAlchemy's wrapping, so a refused connection is a bare OSError)."""

DECISION_TIMEOUT = 5.0
"""Seconds a key lookup or a budget reservation may take before the database counts as
unavailable for it: one that does not answer at all (a cut network) must not hold requests
for asyncpg's 60 s connect timeout."""

# SQLSTATE classes of a server that is away rather than refusing us: 08 connection
# exception, 53 insufficient resources (too many connections), 57P01-57P03 shut down or
# starting up.
_UNREACHABLE_SQLSTATES = ("08", "53", "57P")

FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 15.0
REMINDER_SECONDS = 300.0
"""While the database stays away, a line every this many seconds says so."""


class DatabaseUnusable(Exception):
    """The database answers but cannot be used as configured; the message says why."""


def display_url(engine: AsyncEngine) -> str:
    """The engine's URL as logs show it: the password replaced by ``***``."""
    return engine.url.render_as_string(hide_password=True)


def open_engine(url: str) -> AsyncEngine:
    """The engine for ``url``; :class:`DatabaseUnusable` when SQLite's directory cannot be made."""
    try:
        return create_engine(url)
    except OSError as exc:
        raise DatabaseUnusable(
            f"cannot use the database {make_url(url).render_as_string(hide_password=True)}: "
            f"{error_reason(exc)}; check database.url"
        ) from None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, DBAPIError) and current.orig is not None:
            yield current.orig
        current = current.__cause__ or current.__context__


def is_unreachable(exc: BaseException, backend: str) -> bool:
    """Whether ``exc`` means "the database is not there (yet)", worth waiting for.

    SQLite is a local file: only a lock held by another process passes; a path that cannot
    be opened is the configuration's fault.
    """
    for error in _chain(exc):
        if backend == "sqlite":
            if "database is locked" in str(error):
                return True
            continue
        if isinstance(error, OSError):  # refused, unknown host, timeout, reset
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        sqlstate = str(getattr(error, "sqlstate", "") or "")
        if sqlstate.startswith(_UNREACHABLE_SQLSTATES):
            return True
    return False


def error_reason(exc: BaseException) -> str:
    """The innermost message, on one line: what a reader needs of a database error."""
    inner = list(_chain(exc))[-1]
    text = " ".join(str(inner).split()) or type(inner).__name__
    return f"{type(inner).__name__}: {text[:300]}"


class Schema:
    """Whether the database schema is migrated, and the task that migrates it once it can.

    ``spooled`` tells how many records wait in the spool, for the line that announces the
    database is back.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        spooled: Callable[[], int] = lambda: 0,
        first_delay: float = FIRST_RETRY_DELAY,
        max_delay: float = MAX_RETRY_DELAY,
    ) -> None:
        self._engine = engine
        self._spooled = spooled
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._task: asyncio.Task[None] | None = None
        self.ready = False
        """True once the schema is at the newest revision: the writer may write."""
        self.revision: str | None = None

    async def start(self, spool_location: str) -> None:
        """Migrate now, or log one line and keep trying in the background.

        Raises :class:`DatabaseUnusable` when the database is misconfigured.
        """
        backend = self._engine.dialect.name
        try:
            await self._migrate()
            return
        except DATABASE_ERRORS as exc:
            if not is_unreachable(exc, backend):
                raise DatabaseUnusable(
                    f"cannot use the database {display_url(self._engine)}: {error_reason(exc)}; "
                    "check database.url (host, credentials, database name, file path)"
                ) from None
            log.warning(
                "database %s is not reachable (%s); serving anyway: records are spooled to %s "
                "and the schema is migrated as soon as the database is back",
                display_url(self._engine),
                error_reason(exc),
                spool_location,
            )
        self._task = asyncio.create_task(self._keep_trying(), name="tallyproxy-migrate")

    async def stop(self) -> None:
        """Stop retrying (at shutdown); the next start tries again."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _migrate(self) -> None:
        self.revision = await upgrade_database(self._engine)
        notice = await incomplete_notice(self._engine)
        if notice is not None:
            log.warning("%s", notice)
        self.ready = True

    async def _keep_trying(self) -> None:
        delay = self._first_delay
        last_problem = ""
        since = time.monotonic()
        remind_at = since + REMINDER_SECONDS
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay)
            try:
                await self._migrate()
            except DATABASE_ERRORS as exc:
                # The background boundary: the database may stay away for long; say it once
                # per kind of failure, and then every few minutes, not per attempt.
                problem = error_reason(exc)
                unreachable = is_unreachable(exc, self._engine.dialect.name)
                if problem != last_problem and not unreachable:
                    log.error(
                        "database %s answers but cannot be migrated (%s); retrying every %.0fs",
                        display_url(self._engine),
                        problem,
                        self._max_delay,
                    )
                elif time.monotonic() >= remind_at:
                    log.warning(
                        "database %s still unavailable after %.0fs (%s); %d records spooled",
                        display_url(self._engine),
                        time.monotonic() - since,
                        problem,
                        self._spooled(),
                    )
                    remind_at = time.monotonic() + REMINDER_SECONDS
                last_problem = problem
                continue
            except Exception:
                # Not the database's availability (e.g. a revision this version does not
                # know): a retry may not help, but serving goes on; the traceback tells why.
                log.exception("migrating database %s failed", display_url(self._engine))
                delay = self._max_delay
                continue
            log.warning(
                "database %s reachable again; migrated to revision %s; replaying %d spooled "
                "records",
                display_url(self._engine),
                self.revision,
                self._spooled(),
            )
            return
