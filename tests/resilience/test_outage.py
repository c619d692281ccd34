"""Postgres goes away under load and comes back: every answered request is stored once."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import proxy_settings, start_proxy
from tests.resilience.load import (
    LoadResult,
    assert_sessions_match,
    run_load,
    until,
    wait_for_records,
)
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer

log = logging.getLogger(__name__)
pytestmark = pytest.mark.postgres

OUTAGE_SECONDS = 1.5


async def test_postgres_restart_under_load_loses_nothing(
    restartable_postgres: PostgresServer,
    postgres_url: str,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="proxy")
    fake_upstream.scenario = "slow"
    fake_upstream.delay_ms = 2
    settings = proxy_settings(
        fake_upstream.base_url, postgres_url, database__spool_dir=str(tmp_path / "spool")
    )
    outage: dict[str, float] = {}
    backlog: list[int] = []

    async def break_the_database(proxy_url: str, result: LoadResult) -> None:
        await until(lambda: len(result.answered) >= 60)
        outage["answered_before"] = len(result.answered)
        started = time.monotonic()
        await asyncio.to_thread(restartable_postgres.stop)
        async with httpx.AsyncClient(base_url=proxy_url) as api:
            await asyncio.sleep(OUTAGE_SECONDS / 2)
            ready = await api.get("/readyz")
            assert ready.status_code == 503
            backlog.append(ready.json()["spool_records"])
            await asyncio.sleep(OUTAGE_SECONDS / 2)
        await asyncio.to_thread(restartable_postgres.start)
        outage["seconds"] = time.monotonic() - started
        outage["answered_during"] = len(result.answered) - outage["answered_before"]

    async with start_proxy(settings) as proxy:
        result = LoadResult()
        stop_after: list[int] = []

        def keep_going(current: LoadResult) -> bool:
            if "seconds" in outage and not stop_after:
                stop_after.append(current.sent + 60)  # and a little more once it is back
            return not stop_after or current.sent < stop_after[0]

        load = asyncio.create_task(
            run_load(proxy.url, concurrency=12, keep_going=keep_going, result=result)
        )
        await break_the_database(proxy.url, result)
        await load

        records = await wait_for_records(proxy.api, len(result.answered))
        stats = (await proxy.api.get("/readyz")).json()
        log.warning(
            "outage figures: sent %d, answered %d (%d during a %.2fs outage), stored %d, "
            "spool backlog seen %s, spooled %d, replayed %d",
            result.sent,
            len(result.answered),
            outage["answered_during"],
            outage["seconds"],
            len(records),
            backlog,
            stats["spooled_total"],
            stats["replayed_total"],
        )
        assert result.refused == 0
        assert outage["answered_during"] > 0  # requests kept being served
        assert backlog and backlog[0] > 0  # /readyz showed the spool backlog
        assert sorted(r["id"] for r in records) == sorted(result.answered)
        assert stats["dropped_total"] == 0 and stats["spool_records"] == 0
        assert stats["spooled_total"] > 0
        await assert_sessions_match(proxy.api, records)
