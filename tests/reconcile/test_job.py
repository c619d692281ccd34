"""A round of the periodic job that fails part way stores nothing, and says why."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from proxy.config import load_settings
from proxy.reconcile.job import ReconcileJob
from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.reconciliations import ReconciliationStore
from proxy.store.tables import reconcile_runs
from tests.support.fake_reports import OPENAI_KEY, FakeReports, Traffic, run_fake_reports


@pytest.fixture
def fake() -> Iterator[FakeReports]:
    with run_fake_reports() as server:
        yield server


async def test_a_round_failing_on_its_last_call_stores_nothing(
    fake: FakeReports, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    fake.traffic = [Traffic(now - timedelta(hours=2), "gpt-4o-mini", requests=3, input_tokens=9)]
    url = f"sqlite+aiosqlite:///{tmp_path / 'job.db'}"
    overrides = {
        ("database", "url"): url,
        ("reconcile", "providers"): {"openai": {"api_key_env": "ADMIN", "url": fake.url}},
    }
    settings = load_settings(None, overrides, environ={"ADMIN": OPENAI_KEY})
    engine = create_engine(url)
    since, until = now - timedelta(days=10), now + timedelta(days=1)
    try:
        await upgrade_database(engine)
        job = ReconcileJob(settings, engine)
        store = ReconciliationStore(engine)
        fake.refused_paths = {"/v1/organization/costs"}  # the usage pages all answer
        assert await job.run_round("openai", now) == 0
        assert await store.stored("openai", "1d", since, until) == []
        async with engine.connect() as connection:
            error = (await connection.execute(select(reconcile_runs.c.last_error))).scalar()
        assert error is None  # no schedule row: this round was not claimed, only run
        assert await store.claim_run("openai", now + timedelta(hours=2), job.interval)
        assert await job.run_round("openai", now) == 0
        async with engine.connect() as connection:
            error = (await connection.execute(select(reconcile_runs.c.last_error))).scalar()
        assert error.startswith("openai: GET /v1/organization/costs: HTTP 403")
        assert await store.stored("openai", "1d", since, until) == []

        fake.refused_paths = set()
        await job.run_round("openai", now)
        stored = await store.stored("openai", "1d", since, until)
        assert [(row["final"], row["comparison"]["bucket"]["provider"]["requests"])
                for row in stored] == [(False, 3)]  # fmt: skip
        async with engine.connect() as connection:
            error = (await connection.execute(select(reconcile_runs.c.last_error))).scalar()
        assert error is None
        await job.stop()
    finally:
        await engine.dispose()
