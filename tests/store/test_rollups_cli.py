"""``tallyproxy rollups rebuild`` and ``migrate`` against real databases: rows put in by SQL,
a database migrated from before rollups, and what start-up says about it."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import func, select, text

from proxy.cli import main
from proxy.commands.rollups import ProgressLine, format_rebuild_report
from proxy.store.availability import Schema
from proxy.store.engine import create_engine
from proxy.store.migrate import alembic_config, upgrade_database
from proxy.store.rebuild import DayDone, RebuildReport
from proxy.store.rollups import rollups_complete
from proxy.store.rows import write_records
from proxy.store.tables import rollups
from tests.store.factory import make_record
from tests.store.rollup_truth import assert_rollups_match_raw_rows

NOW = datetime.now(UTC)
YEAR_AGO = NOW - timedelta(days=365)
TOMORROW = NOW + timedelta(days=1)


def _stored_at(moment: datetime, dialect: str) -> str:
    # How an importing tool would write a UTC time: SQLite keeps it as text.
    return moment.strftime("%Y-%m-%d %H:%M:%S" if dialect == "sqlite" else "%Y-%m-%dT%H:%M:%SZ")


async def _main(argv: list[str]) -> int:
    """The command line, in a thread of its own: it runs its own event loop."""
    return await asyncio.to_thread(main, argv)


async def _total_requests(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            query = select(func.sum(rollups.c.requests)).where(
                rollups.c.cube == "total", rollups.c.grain == "hour"
            )
            return int(await connection.scalar(query) or 0)
    finally:
        await engine.dispose()


async def test_rows_inserted_by_sql_with_minimal_columns_count_after_a_rebuild(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        await write_records(engine, [make_record(created_at=NOW - timedelta(minutes=5))])
        dialect = engine.dialect.name
        async with engine.begin() as connection:
            for n, moment in enumerate((YEAR_AGO, YEAR_AGO + timedelta(hours=2), TOMORROW)):
                await connection.execute(
                    text(
                        "INSERT INTO requests (id, created_at, model, user_id, prompt_tokens,"
                        f" completion_tokens, total_tokens) VALUES ('import-{n}',"
                        f" '{_stored_at(moment, dialect)}', 'imported-model', 'alice', 100, 20,"
                        " 120)"
                    ),
                )
        assert await _total_requests(database_url) == 1  # not in the rollups yet
        since = YEAR_AGO.strftime("%Y-%m-%d")
        assert (
            await _main(["rollups", "rebuild", "--database-url", database_url, "--since", since])
            == 0
        )
        out, err = capsys.readouterr()
        assert "from 4 records" in out and "they hold every stored record" in out
        assert "day 367/367, 4 records" in err  # one line per day, not a terminal
        assert await _total_requests(database_url) == 4
        await assert_rollups_match_raw_rows(engine)
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT method, status_code, stream, endpoint, upstream,"
                        " CAST(properties AS TEXT) AS properties"
                        " FROM requests WHERE id = 'import-0'"
                    )
                )
            ).one()
        assert (row.method, row.status_code, bool(row.stream)) == ("POST", 200, False)
        assert (row.endpoint, row.upstream, row.properties) == ("", "", "{}")
    finally:
        await engine.dispose()


async def _database_from_before_rollups(url: str) -> None:
    """A database at revision 0006, from before rollups, holding one record."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0006"))
            at = _stored_at(YEAR_AGO, engine.dialect.name)
            await connection.execute(
                text(
                    "INSERT INTO requests (id, created_at, endpoint, method, status_code, stream,"
                    f" upstream, properties, model, total_tokens) VALUES ('old-1', '{at}',"
                    " '/v1/chat/completions', 'POST', 200, false, 'https://api.openai.com/v1',"
                    """ '{"env": "prod"}', 'gpt-4o', 42)"""
                )
            )
            await connection.commit()
    finally:
        await engine.dispose()


async def test_migrate_says_summaries_read_raw_rows_until_a_rebuild(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await _database_from_before_rollups(database_url)
    assert await _main(["migrate", "--database-url", database_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "up to date" in out[0]
    assert "read raw rows until `tallyproxy rollups rebuild` runs" in out[1]
    assert f"from {YEAR_AGO:%Y-%m-%d} to {YEAR_AGO:%Y-%m-%d}" in out[1]
    assert await _main(["rollups", "rebuild", "--database-url", database_url]) == 0
    assert "they hold every stored record" in capsys.readouterr().out
    assert await _total_requests(database_url) == 1
    assert await _main(["migrate", "--database-url", database_url]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # nothing more to say


async def test_start_up_logs_the_same_line(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _database_from_before_rollups(database_url)
    engine = create_engine(database_url)
    try:
        with caplog.at_level(logging.WARNING, logger="proxy.store.availability"):
            await Schema(engine).start("spool")
        (line,) = [r.getMessage() for r in caplog.records if "rollups" in r.getMessage()]
        assert "until `tallyproxy rollups rebuild` runs" in line
        async with engine.connect() as connection:
            assert not await rollups_complete(connection)
    finally:
        await engine.dispose()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_says_the_time_left() -> None:
    terminal = _Terminal()
    show = ProgressLine(terminal)
    day = datetime(2026, 11, 1, tzinfo=UTC)
    show(DayDone(day, 1, 4, 1000, 2.0))
    show(DayDone(day + timedelta(days=1), 2, 4, 3000, 4.0))
    show.finish()
    text = terminal.getvalue()
    assert text.count("\r\x1b[K") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "2026-11-02 day 2/4, 3,000 records, 750 records/s, ETA 0:00:04" in text


def test_an_empty_database_has_nothing_to_rebuild() -> None:
    assert "nothing to rebuild" in format_rebuild_report(RebuildReport(complete=True))
