"""Database trouble from the command line: one line naming the database, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port

CLOSED_POSTGRES = "postgresql+asyncpg://tally:s3cret-pw@127.0.0.1:{port}/tally"


def tallyproxy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "command", [["migrate"], ["report"], ["keys", "list"], ["reprice", "--since", "1d"]]
)
def test_an_unreachable_postgres_is_one_line_naming_it(command: list[str], tmp_path: Path) -> None:
    url = CLOSED_POSTGRES.format(port=free_port())
    done = tallyproxy(*command, "--database-url", url, cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach the database postgresql+asyncpg://tally:***@127.0.0.1" in lines[0]
    assert "Connect call failed" in lines[0]
    assert "s3cret-pw" not in done.stderr + done.stdout


@pytest.mark.parametrize("command", [["report"], ["keys", "list"], ["prune", "--older-than", "1d"]])
def test_commands_that_read_refuse_a_missing_sqlite_file(
    command: list[str], tmp_path: Path
) -> None:
    done = tallyproxy(*command, cwd=tmp_path)
    assert done.returncode == 2
    assert f"no database at {tmp_path / 'tallyproxy.db'}" in done.stderr
    assert not (tmp_path / "tallyproxy.db").exists()


def test_migrate_still_creates_the_sqlite_file(tmp_path: Path) -> None:
    done = tallyproxy("migrate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tallyproxy.db").exists()
    assert "Context impl" not in done.stderr and "Will assume" not in done.stderr
