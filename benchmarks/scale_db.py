"""Databases for the scale benchmarks: a Postgres that may outlive the run, and the fill.

``KeptPostgres`` is the tests' throwaway server (same settings: durability off) in a data
directory of the caller's choosing, which is kept when asked, so a 10 M record fill is made
once. ``fill`` migrates a fresh database with ``tallyproxy migrate``, puts the synthetic rows
in (COPY on Postgres from parallel processes, ``executemany`` in big transactions on SQLite),
derives ``sessions`` from them as the writer would have kept it, and runs
``tallyproxy rollups rebuild`` when this checkout has that command.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import multiprocessing
import os
import pwd
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.dialects import sqlite as sqlite_dialect
from synthetic import Shape, Synthetic

from proxy.store.engine import create_engine
from proxy.store.partitions import ensure_partitions
from proxy.store.tables import TOKEN_FIELDS, requests
from tests.support.postgres import _SETTINGS, PostgresServer, find_postgres_bin

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = tuple(column.name for column in requests.columns)
DAYS_PER_TASK = 1


class KeptPostgres(PostgresServer):
    """A local server whose data lives in ``directory`` (created if new, reused if not)."""

    def __init__(self, directory: Path, settings: dict[str, str]) -> None:
        super().__init__()
        self._directory = directory
        self._settings = settings

    def _init_data_dir(self) -> None:
        self._bin = find_postgres_bin()
        self._base_dir = self._directory
        self._directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self._directory, user.pw_uid, user.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        settings = {**_SETTINGS, **self._settings, "unix_socket_directories": f"'{self.data_dir}'"}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# tallyproxy scale benchmark: the tests' settings\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def close(self) -> None:
        """Stop the server; the data directory stays (the caller deletes it or not)."""
        self.stop()


@dataclass
class FillReport:
    records: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Per step (copy, sessions, analyze, rollups rebuild), wall-clock seconds."""

    @property
    def rows_per_second(self) -> float:
        return self.records / max(1e-9, self.seconds.get("rows", 0.0))


def migrate(url: str) -> None:
    """The schema of this checkout, made by the proxy itself."""
    command = [sys.executable, "-m", "proxy", "migrate", "--database-url", url]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tallyproxy migrate failed:\n{done.stdout}{done.stderr[-3000:]}")


def fill(url: str, shape: Shape, jobs: int, progress: Callable[[str], None]) -> FillReport:
    """Migrate the empty database at ``url`` and fill it with ``shape``'s rows."""
    report = FillReport(records=shape.records)
    started = time.perf_counter()
    migrate(url)
    report.seconds["migrate"] = time.perf_counter() - started
    postgres = url.startswith("postgresql")
    put_rows = _copy_postgres if postgres else _insert_sqlite
    steps: list[tuple[str, Callable[[], None]]] = [
        # A server that ran for these days made their partitions ahead of them: without,
        # every row would land in the default partition (what an import into the past does).
        *([("partitions", lambda: _make_partitions(url, shape))] if postgres else []),
        ("rows", lambda: put_rows(url, shape, jobs, progress)),
        ("sessions", lambda: _run_sql(url, [sessions_sql(), *virtual_keys_sql(shape)])),
    ]
    if postgres:
        # What autovacuum does on a real server (the tests' server runs without it).
        steps.append(("vacuum analyze", lambda: _run_sql(url, ["VACUUM (ANALYZE)"])))
    if rollups_command_exists():
        steps.append(("rollups rebuild", lambda: rebuild_rollups(url)))
    for name, step in steps:
        started = time.perf_counter()
        step()
        report.seconds[name] = time.perf_counter() - started
        progress(f"{name}: {report.seconds[name]:.1f} s")
    return report


def _make_partitions(url: str, shape: Shape) -> None:
    async def run() -> None:
        engine = create_engine(url)
        try:
            first = (shape.end - timedelta(days=shape.days)).date()
            await ensure_partitions(engine, first, shape.end.date())
        finally:
            await engine.dispose()

    asyncio.run(run())


def rollups_command_exists() -> bool:
    """Whether this checkout's CLI has ``tallyproxy rollups rebuild``."""
    command = [sys.executable, "-m", "proxy", "rollups", "rebuild", "--help"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    return done.returncode == 0


def rebuild_rollups(url: str) -> None:
    """``tallyproxy rollups rebuild`` over every row; its progress goes to our output."""
    command = [sys.executable, "-m", "proxy", "rollups", "rebuild", "--database-url", url]
    subprocess.run(command, cwd=ROOT, check=True)


def sessions_sql() -> str:
    """``sessions`` from the rows, as ``proxy.store.rows._session_totals`` sums them.

    A synthetic session has one user, so the writer's "newest non-null user" is its only one.
    """
    tokens = ", ".join(TOKEN_FIELDS)
    sums = ", ".join(f"COALESCE(SUM({name}), 0)" for name in TOKEN_FIELDS)
    return f"""
        INSERT INTO sessions (session_id, user_id, requests, {tokens}, cost_usd,
                              unpriced_requests, first_request_at, last_request_at,
                              errors, latency_ms, tool_calls)
        SELECT session_id, MAX(user_id), COUNT(*), {sums}, SUM(cost_usd),
               COUNT(*) - COUNT(cost_usd), MIN(created_at), MAX(created_at),
               SUM(CASE WHEN status_code >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END),
               COALESCE(SUM(latency_ms), 0), COALESCE(SUM(tool_calls), 0)
        FROM requests WHERE session_id IS NOT NULL GROUP BY session_id"""


def virtual_keys_sql(shape: Shape) -> list[str]:
    """The ``virtual_keys`` rows of the key ids the requests carry."""
    statements = []
    for key in _synthetic(shape).virtual_keys():
        created = key["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")
        statements.append(
            "INSERT INTO virtual_keys (id, name, key_hash, display_prefix, models, created_at) "
            f"VALUES ('{key['id']}', '{key['name']}', '{key['key_hash']}', "
            f"'{key['display_prefix']}', '[]', '{created}')"
        )
    return statements


def analyze(url: str) -> None:
    """Fresh planner statistics (the test server runs without autovacuum)."""
    _run_sql(url, ["ANALYZE"])


def _run_sql(url: str, statements: list[str]) -> None:
    if url.startswith("sqlite"):
        connection = sqlite3.connect(sqlite_path(url))
        try:
            with connection:
                for statement in statements:
                    connection.execute(statement)
        finally:
            connection.close()
        return

    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(url))
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def query_value(url: str, sql: str) -> Any:
    """The first value of the first row of ``sql`` on the Postgres at ``url``."""

    async def run() -> Any:
        connection = await asyncpg.connect(plain_dsn(url))
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()

    return asyncio.run(run())


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


@functools.cache
def _synthetic(shape: Shape) -> Synthetic:
    """One generator per process and shape: its set-up (the session table) is not free."""
    return Synthetic(shape)


def _tasks(shape: Shape) -> list[range]:
    hours = shape.days * 24
    step = 24 * DAYS_PER_TASK
    return [range(start, min(hours, start + step)) for start in range(0, hours, step)]


def _run_tasks(
    work: Callable[[range], Any], shape: Shape, jobs: int, progress: Callable[[str], None]
) -> Iterator[Any]:
    """``work`` over the hours in tasks of a day, on ``jobs`` processes, results in order."""
    tasks = _tasks(shape)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(jobs))
            results = _bounded(pool, work, tasks, 2 * jobs)
        else:
            results = map(work, tasks)
        for done, result in enumerate(results, 1):
            yield result
            if done % 5 == 0 or done == len(tasks):
                elapsed = time.perf_counter() - started
                rows = sum(_synthetic(shape).hour_counts[h][1] for t in tasks[:done] for h in t)
                progress(f"  {done}/{len(tasks)} days, {rows:,} rows, {rows / elapsed:,.0f} rows/s")


def _bounded(
    pool: Any, work: Callable[[range], Any], tasks: list[range], ahead: int
) -> Iterator[Any]:
    """``pool.imap`` that makes at most ``ahead`` results before they are taken (rows for
    SQLite wait in memory for the one writer)."""
    pending: collections.deque[Any] = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(work, (task,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _copy_postgres(url: str, shape: Shape, jobs: int, progress: Callable[[str], None]) -> None:
    work = functools.partial(_copy_hours, plain_dsn(url), shape)
    for _ in _run_tasks(work, shape, jobs, progress):
        pass


def _copy_hours(dsn: str, shape: Shape, hours: range) -> int:
    async def run() -> int:
        connection = await asyncpg.connect(dsn)
        copied = 0
        try:
            synthetic = _synthetic(shape)
            for hour in hours:
                records = [tuple(row[c] for c in COLUMNS) for row in synthetic.hour(hour)]
                await connection.copy_records_to_table("requests", records=records,
                                                       columns=COLUMNS)  # fmt: skip
                copied += len(records)
        finally:
            await connection.close()
        return copied

    return asyncio.run(run())


def _insert_sqlite(url: str, shape: Shape, jobs: int, progress: Callable[[str], None]) -> None:
    """Rows made by ``jobs`` processes, inserted by this one: SQLite has one writer."""
    connection = sqlite3.connect(sqlite_path(url))
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    # Index pages stay in memory while they are filled (the default cache is 2 MB: inserts
    # slowed down tenfold once the indexes outgrew it). The proxy's own connections, which
    # are measured, keep the default.
    connection.execute("PRAGMA cache_size=-2000000")
    statement = (
        f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    )
    try:
        work = functools.partial(_sqlite_hours, shape)
        for records in _run_tasks(work, shape, jobs, progress):
            with connection:
                connection.executemany(statement, records)
    finally:
        connection.close()


def _sqlite_hours(shape: Shape, hours: range) -> list[tuple[Any, ...]]:
    """Rows as SQLite stores them: the bind processors of ``proxy.store.types`` applied."""
    dialect = sqlite_dialect.dialect()
    convert = {
        name: requests.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        for name in ("created_at", "cost_usd")
    }
    synthetic = _synthetic(shape)
    records = []
    for hour in hours:
        for row in synthetic.hour(hour):
            row["created_at"] = convert["created_at"](row["created_at"])  # type: ignore[misc]
            if row["cost_usd"] is not None:
                row["cost_usd"] = convert["cost_usd"](row["cost_usd"])  # type: ignore[misc]
            records.append(tuple(row[c] for c in COLUMNS))
    return records
