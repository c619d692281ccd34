"""``tallyproxy digest``: a dry run prints the digest; without a destination it says what to set."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.anomalies.detect import Anomaly, Baseline, Exceeded, Observation
from proxy.cli import main
from proxy.store.anomalies import AnomalyStore
from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.rows import write_records
from proxy.usage import Usage
from tests.store.factory import make_record

DAY = datetime(2026, 11, 30, 9, tzinfo=UTC)


async def flag(
    engine: AsyncEngine,
    kind: str,
    subject: str,
    at: datetime = DAY,
    cost: Decimal = Decimal("0.5"),
    tokens: int = 5000,
) -> None:
    """Store an anomaly of ``subject`` in the hour of ``at``."""
    seen = Observation(kind, subject, None, at.replace(minute=0, second=0), cost, tokens)
    base = Baseline(Decimal(10), Decimal(1), 5, 9)
    exceeded = Exceeded("total_tokens", Decimal(tokens), base, Decimal(100))
    await AnomalyStore(engine).claim(Anomaly(seen, (exceeded,)), 1, [], at)


def _database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    asyncio.run(_prepare(url))
    return url


async def _prepare(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade_database(engine)
        usage = Usage(prompt_tokens=1000, completion_tokens=234, total_tokens=1234)
        await write_records(engine, [
            make_record(created_at=DAY, usage=usage, cost_usd=Decimal("1.25"), user_id="ann"),
            make_record(created_at=DAY, usage=usage, cost_usd=None, model="local", user_id="ann"),
        ])  # fmt: skip
        await flag(engine, "user", "ann", DAY, Decimal("1.25"), 2468)
    finally:
        await engine.dispose()


def test_a_dry_run_prints_the_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _database(tmp_path)
    argv = ["digest", "--database-url", url, "--day", "2026-11-30", "--dry-run"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "digest for 2026-11-30" in text and "2,468" in text and "$1.25" in text
    assert "Unpriced requests: 1" in text
    assert "user ann: 2,468 tokens, $1.25 from 2026-11-30T09:00:00+00:00" in text
    assert main([*argv, "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["totals"]["total_tokens"] == 2468
    assert body["anomalies"] == [
        {
            "kind": "user",
            "subject": "ann",
            "cost_usd": "1.25",
            "window_start": "2026-11-30T09:00:00+00:00",
            "total_tokens": 2468,
        }
    ]
    assert main([*argv, "--format", "html"]) == 0
    assert capsys.readouterr().out.startswith("<html>")


def test_without_a_destination_it_says_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _database(tmp_path)
    assert main(["digest", "--database-url", url]) == 2
    assert "set digest.webhook_url or digest.smtp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["digest", "--database-url", url, "--day", "30/11/2026", "--dry-run"])
    assert "is not a day like 2026-12-02" in capsys.readouterr().err
