"""A real, throwaway PostgreSQL server for tests.

The server runs from a temporary data directory on 127.0.0.1 with durability switched off
(fsync, synchronous_commit, full_page_writes) because nothing in it has to survive the test
session. ``stop()`` and ``start()`` may be called mid-test: the data directory and the port
stay the same, so a test can take the database away under load and bring it back.

When ``TALLYPROXY_TEST_POSTGRES_URL`` is set (a server started by CI) that server is used as
is, and stopping or starting it is not supported.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from tests.support.servers import free_port

__all__ = ["ENV_URL", "PostgresNotFound", "PostgresServer", "find_postgres_bin"]

ENV_URL = "TALLYPROXY_TEST_POSTGRES_URL"
_SYSTEM_USER = "postgres"
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "jit": "off",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


# Stops the server and deletes its files when the test process dies without cleaning up
# (SIGKILL, a CI timeout): the test process holds our stdin; EOF without "done" means it died.
_WATCHDOG = """
import shutil, subprocess, sys
if sys.stdin.read().strip() != "done":
    subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_postgres_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks on PATH first, then under Debian's ``/usr/lib/postgresql/<version>/bin`` (newest
    version wins), which is where ``apt-get install postgresql`` puts them.
    """
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor under "
        f"/usr/lib/postgresql/*/bin: install them (apt-get install postgresql) or set {ENV_URL} "
        "to a running server, or deselect these tests with -m 'not postgres'"
    )


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on a private loop in a helper thread.

    This keeps the caller's event loop (pytest-asyncio's, possibly running) untouched.
    """
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # re-raised in the calling thread
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class PostgresServer:
    """One PostgreSQL server: local and throwaway, or external (``TALLYPROXY_TEST_POSTGRES_URL``).

    ``url(db)`` gives a SQLAlchemy URL for the asyncpg driver; ``dsn(db)`` a plain libpq one.
    """

    def __init__(
        self, external_url: str | None = None, settings: Mapping[str, str] | None = None
    ) -> None:
        self.external = external_url is not None
        self._settings = {**_SETTINGS, **(settings or {})}
        self.running = False
        self._base_dir: Path | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._userinfo = "postgres"
        self._bin: Path | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        if external_url is not None:
            parts = urlsplit(external_url)
            self.host = parts.hostname or "127.0.0.1"
            self.port = parts.port or 5432
            userinfo, _, _ = parts.netloc.rpartition("@")
            self._userinfo = userinfo or "postgres"
            self.running = True

    @classmethod
    def from_environment(cls) -> PostgresServer:
        """The CI server when ``TALLYPROXY_TEST_POSTGRES_URL`` is set, else a local one."""
        return cls(os.environ.get(ENV_URL) or None)

    @property
    def data_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("the server has no data directory yet: call start() first")
        return self._base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """``postgresql+asyncpg://postgres@127.0.0.1:PORT/<database>``."""
        return f"postgresql+asyncpg://{self._userinfo}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The same address as :meth:`url` for asyncpg or psql (no driver suffix)."""
        return urlunsplit(
            ("postgresql", f"{self._userinfo}@{self.host}:{self.port}", f"/{database}", "", "")
        )

    def _require_local(self, action: str) -> None:
        if self.external:
            raise RuntimeError(
                f"cannot {action} the external PostgreSQL server given by {ENV_URL}; tests that "
                "stop or start the database need the local throwaway server (unset the variable)"
            )

    def _command(self, program: str, *args: str) -> list[str]:
        assert self._bin is not None
        argv = [str(self._bin / program), *args]
        # initdb and postgres refuse to run as root.
        if os.geteuid() == 0:
            argv = ["runuser", "-u", _SYSTEM_USER, "--", *argv]
        return argv

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> None:
        assert self._base_dir is not None
        completed = subprocess.run(
            self._command(program, *args),
            cwd=self._base_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            log = ""
            if self.log_path.exists():
                log = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{program} {' '.join(args)} failed with code {completed.returncode}:\n"
                f"{completed.stdout.decode(errors='replace')}\n{log}"
            )

    def _init_data_dir(self) -> None:
        self._make_base_dir()
        self._create_cluster()
        settings = {**self._settings, "unix_socket_directories": f"'{self.data_dir}'"}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# tallyproxy tests: speed over durability\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._start_watchdog()

    def _make_base_dir(self) -> None:
        self._bin = find_postgres_bin()
        as_root = os.geteuid() == 0
        # As root, stay out of a TMPDIR the postgres user may not be able to reach.
        self._base_dir = Path(
            tempfile.mkdtemp(prefix="tallyproxy-pg-", dir="/tmp" if as_root else None)
        )
        if as_root:
            try:
                user = pwd.getpwnam(_SYSTEM_USER)
            except KeyError:
                raise PostgresNotFound(
                    "running as root, but there is no 'postgres' system user to run the server "
                    "as (it comes with apt-get install postgresql)"
                ) from None
            os.chown(self._base_dir, user.pw_uid, user.pw_gid)

    def _create_cluster(self) -> None:
        """A new, empty data directory (a standby copies its primary's instead)."""
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )

    def _start_watchdog(self) -> None:
        stop = self._command("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self._base_dir), *stop],
            stdin=subprocess.PIPE,
            start_new_session=True,  # out of reach of the terminal's Ctrl-C
        )

    def start(self) -> None:
        """Start the server (initialising a data directory on first start)."""
        self._require_local("start")
        if self.running:
            return
        if self._base_dir is None:
            self._init_data_dir()
        if self.port:
            self._pg_ctl_start(self.port)
        else:
            # The port is picked before postgres binds it; retry if someone else took it.
            for attempt in range(3):
                port = free_port()
                try:
                    self._pg_ctl_start(port)
                except RuntimeError:
                    if attempt == 2:
                        raise
                    continue
                self.port = port
                break
        self.running = True

    def _pg_ctl_start(self, port: int) -> None:
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port}",
        )

    def stop(self) -> None:
        """Fast shutdown: open transactions roll back, clients are disconnected."""
        self._require_local("stop")
        if not self.running:
            return
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")
        self.running = False

    def restart(self) -> None:
        """Stop then start again, on the same port and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop a local server and delete its data; nothing for an external one."""
        if self.external:
            return
        self.stop()
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.write(b"done\n")
            self._watchdog.stdin.close()
            self._watchdog.wait(10)
            self._watchdog = None

    async def execute_async(self, sql: str, database: str = "postgres") -> None:
        """Run one statement (outside a transaction, as CREATE DATABASE needs)."""
        conn = await asyncpg.connect(self.dsn(database), timeout=30)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Blocking :meth:`execute_async`; safe to call while an event loop is running."""
        _run_coroutine(self.execute_async(sql, database))

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name (a unique one when not given)."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
