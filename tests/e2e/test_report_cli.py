"""`tallyproxy report` as users run it: a separate process reading a seeded SQLite database."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.writer import write_records
from proxy.usage import Usage
from tests.store.factory import make_record

ROOT = Path(__file__).resolve().parents[2]


def report(database: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    url = f"sqlite+aiosqlite:///{database}"
    command = [sys.executable, "-m", "proxy", "report", "--database-url", url, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


async def test_report_command(tmp_path: Path) -> None:
    database = tmp_path / "report.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    await upgrade_database(engine)
    now = datetime.now(UTC).replace(microsecond=0)
    today = datetime.combine(now.date(), datetime.min.time(), UTC)
    records = [
        # Today: 3 requests (2 gpt-4o by alice, 1 o3-mini by bob); yesterday: 2; 40 days ago: 1.
        make_record(created_at=now - timedelta(minutes=5), model="gpt-4o", user_id="alice",
                    usage=Usage(100, 50, 150), cost_usd=Decimal("0.001")),
        make_record(created_at=now - timedelta(minutes=4), model="gpt-4o", user_id="alice",
                    usage=Usage(100, 50, 150), cost_usd=Decimal("0.002")),
        make_record(created_at=now - timedelta(minutes=3), model="o3-mini", user_id="bob",
                    usage=Usage(10, 5, 15), cost_usd=None),
        make_record(created_at=today - timedelta(hours=12), model="gpt-4o", user_id="alice",
                    usage=Usage(200, 100, 300), cost_usd=Decimal("0.004")),
        make_record(created_at=today - timedelta(hours=13), model="gpt-4o", user_id="alice",
                    usage=Usage(200, 100, 300), cost_usd=Decimal("0.004")),
        make_record(created_at=now - timedelta(days=40), model="gpt-4o", user_id="carol"),
    ]  # fmt: skip
    await write_records(engine, records)
    await engine.dispose()

    done = report(database, "--since", "10m", "--by", "model")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["model", "requests", "prompt", "completion", "total", "tokens",
                                "cost", "USD", "unpriced"]  # fmt: skip
    assert lines[2].split() == ["gpt-4o", "2", "200", "100", "300", "0.003", "0"]
    assert lines[3].split() == ["o3-mini", "1", "10", "5", "15", "unknown", "1"]
    assert lines[-1].split() == ["total", "3", "210", "105", "315", "0.003", "1"]

    done = report(database, "--since", "30d", "--by", "user", "--format", "json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert [(r["key"], r["requests"], r["cost_usd"]) for r in body["data"]] == [
        ("alice", 4, "0.011"),
        ("bob", 1, None),
    ]

    done = report(database, "--daily", "--days", "2", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        f"{(today - timedelta(days=1)).date()},2,,600,,0.008,",
        f"{today.date()},3,50,315,-47.5,0.003,-62.5",
    ]

    done = report(database, "--daily", "--since", "1d")
    assert done.returncode == 2
    assert "--daily" in done.stderr
    done = report(database, "--by", "user", "--property", "nocolon")
    assert done.returncode == 2
    assert "name:value" in done.stderr
