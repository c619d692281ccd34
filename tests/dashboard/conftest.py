"""A headless Chromium and a proxy with a realistic week of usage behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.records import RequestRecord
from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.writer import write_records
from proxy.usage import Usage
from tests.dashboard.browser import Browser, ChromiumMissing, find_chromium
from tests.store.factory import make_record

HOSTILE_USER = '<img src=x onerror="document.body.dataset.pwned=1">'


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    try:
        executable = find_chromium()
    except ChromiumMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    async with Browser(tmp_path / "chromium-profile", executable) as running:
        yield running


def week_of_usage(now: datetime) -> list[RequestRecord]:
    """Six days of requests: three models (one unpriced), users (one hostile), properties."""
    records = []
    for i in range(48):
        at = now - timedelta(hours=3 * i + 1, minutes=7)
        model = ("gpt-4o", "gpt-4o-mini", "mystery-model")[i % 3]
        records.append(
            make_record(
                created_at=at,
                model=model,
                user_id=("alice", "bob", None, HOSTILE_USER)[i % 4],
                session_id=f"batch-{i // 6}" if i % 5 else None,
                properties={"env": "prod" if i % 2 else "dev"},
                usage=Usage(100 + 10 * i, 20 + i, 120 + 11 * i, cached_tokens=i),
                cost_usd=None if model == "mystery-model" else Decimal("0.000125") * (i + 1),
                latency_ms=200.0 + i,
            )
        )
    return records


async def seed(database_url: str, records: list[RequestRecord]) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        await write_records(engine, records)
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'dashboard.db'}"


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
