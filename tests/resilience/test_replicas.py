"""Two proxy processes share one Postgres and the same sessions, and Postgres restarts in the
middle: every answer is stored once, and session totals equal the sums over the records."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import httpx
import pytest

from tests.resilience.load import (
    LoadResult,
    assert_sessions_match,
    run_load,
    until,
    wait_for_records,
)
from tests.resilience.test_shutdown import serve, write_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer
from tests.support.servers import run_process_server

log = logging.getLogger(__name__)
pytestmark = pytest.mark.postgres

PER_REPLICA = 200


async def test_two_replicas_on_one_postgres_never_double_count(
    restartable_postgres: PostgresServer,
    postgres_url: str,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    fake_upstream.scenario = "slow,chunks=4"
    fake_upstream.delay_ms = 3
    with contextlib.ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            config = write_config(
                tmp_path / f"{name}.yaml", fake_upstream.base_url, postgres_url, tmp_path / name
            )
            argv, port = serve(config)
            stack.enter_context(run_process_server(argv, port))
            urls.append(f"http://127.0.0.1:{port}")
        results = [LoadResult(), LoadResult()]
        restarted: list[int] = []

        def keep_going(result: LoadResult) -> bool:
            # Until Postgres is back, then PER_REPLICA requests more each: direct writes too.
            return not restarted or result.sent < restarted[results.index(result)] + PER_REPLICA

        loads = [
            run_load(url, concurrency=8, keep_going=keep_going, result=result)
            for url, result in zip(urls, results, strict=True)
        ]

        async def restart_postgres() -> None:
            await until(lambda: sum(len(r.answered) for r in results) >= PER_REPLICA // 2)
            await asyncio.to_thread(restartable_postgres.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(restartable_postgres.start)
            restarted.extend(r.sent for r in results)

        await asyncio.gather(*loads, restart_postgres())
        answered = [i for r in results for i in r.answered]
        async with httpx.AsyncClient(base_url=urls[0], timeout=30) as api:
            records = await wait_for_records(api, len(answered), within=30)
            await assert_sessions_match(api, records)
            sessions = (await api.get("/usage/sessions", params={"limit": 1000})).json()["data"]
            stats = [(await api.get(f"{url}/readyz")).json() for url in urls]
    log.warning(
        "replicas: sent %s, answered %s, stored %d, unique ids %d, session requests %d, "
        "spooled %s, replayed %s, written %s",
        [r.sent for r in results],
        [len(r.answered) for r in results],
        len(records),
        len({r["id"] for r in records}),
        sum(s["requests"] for s in sessions),
        [s["spooled_total"] for s in stats],
        [s["replayed_total"] for s in stats],
        [s["written_total"] for s in stats],
    )
    assert all(r.refused == 0 for r in results)
    assert all(len(r.answered) == r.sent >= PER_REPLICA for r in results)
    assert sorted(r["id"] for r in records) == sorted(answered)  # each once, none missing
    assert sum(s["requests"] for s in sessions) == len(records)  # no double count
    assert all(s["dropped_total"] == 0 for s in stats)
