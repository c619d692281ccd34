"""Reads off the primary, against a real Postgres streaming replica (``pg_basebackup -R``).

Records go in through a running proxy with the official ``openai`` SDK; what the usage API
answers, and from where, is read with plain HTTP. The standby is paused, stopped and started
under the proxy to see what a caller gets meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.rows import write_records
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.store.factory import make_record
from tests.support.fake_upstream import FakeUpstream
from tests.support.replica import ReplicatedDatabase

pytestmark = pytest.mark.postgres

MESSAGES = [{"role": "user", "content": "hello"}]
SOURCE = "x-tally-read-source"
LAG = "x-tally-replica-lag-seconds"
ROOT = Path(__file__).resolve().parents[2]


def replica_proxy(
    fake: FakeUpstream, database: ReplicatedDatabase, max_lag: float = 10.0
) -> start_proxy:
    settings = proxy_settings(
        fake.base_url,
        database.primary_url,
        database__read_url=database.standby_url,
        database__read_max_lag_seconds=max_lag,
    )
    return start_proxy(settings)


async def send(proxy: RunningProxy, count: int, model: str = "gpt-4o") -> None:
    for _ in range(count):
        await proxy.sdk.chat.completions.create(model=model, messages=MESSAGES)


async def until(
    ask: Callable[[], Awaitable[httpx.Response]],
    done: Callable[[httpx.Response], bool],
    wait: float = 30.0,
) -> httpx.Response:
    """Ask again every 50 ms until ``done``; every answer on the way must be a 200."""
    deadline = time.monotonic() + wait
    while True:
        response = await ask()
        assert response.status_code == 200, response.text
        if done(response):
            return response
        assert time.monotonic() < deadline, f"still {response.headers} {response.text[:300]}"
        await asyncio.sleep(0.05)


def listed(proxy: RunningProxy) -> Callable[[], Awaitable[httpx.Response]]:
    return lambda: proxy.api.get("/usage/requests", params={"limit": 1000})


def count(response: httpx.Response) -> int:
    return len(response.json()["data"])


def gauges(exposition: str) -> dict[str, float]:
    """The read replica's gauges in a /metrics answer."""
    found = {}
    for line in exposition.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("tallyproxy_read_replica_"):
            found[name] = float(value)
    return found


async def stored_on_primary(database: ReplicatedDatabase, expected: int) -> None:
    deadline = time.monotonic() + 30
    while await database.fetchval("SELECT count(*) FROM requests", on="primary") < expected:
        assert time.monotonic() < deadline, "the proxy did not store the records"
        await asyncio.sleep(0.05)


async def test_records_written_through_the_proxy_are_read_from_the_replica(
    fake_upstream: FakeUpstream, replicated_database: ReplicatedDatabase
) -> None:
    async with replica_proxy(fake_upstream, replicated_database) as proxy:
        await send(proxy, 3)
        await send(proxy, 2, model="gpt-4o-mini")
        answer = await until(
            listed(proxy), lambda r: count(r) == 5 and r.headers[SOURCE] == "replica"
        )
        assert 0 <= float(answer.headers[LAG]) <= 10
        record_id = answer.json()["data"][0]["id"]

        one = await proxy.api.get(f"/usage/requests/{record_id}")
        summary = await proxy.api.get("/usage/summary", params={"group_by": "model"})
        drift = await proxy.api.get("/usage/drift")
        ready = await proxy.api.get("/readyz")
        # The engine behind those answers holds its connections on the standby, in recovery.
        readers = await replicated_database.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tallyproxy-reads'"
            " AND pg_is_in_recovery()",
            on="standby",
        )
        on_primary = await replicated_database.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tallyproxy-reads'",
            on="primary",
        )

    assert one.status_code == 200 and one.headers[SOURCE] == "replica"
    assert one.json()["id"] == record_id
    totals = {row["key"]: row["requests"] for row in summary.json()["data"]}
    assert summary.headers[SOURCE] == "replica"
    assert totals == {"gpt-4o": 3, "gpt-4o-mini": 2}
    assert drift.status_code == 200 and drift.headers[SOURCE] == "replica"
    assert ready.status_code == 200
    assert ready.json()["read_replica"]["state"] == "streaming"
    assert ready.json()["read_replica"]["reads_from"] == "replica"
    assert readers >= 1 and on_primary == 0


async def test_paused_replay_is_flagged_then_read_from_the_primary_past_the_bound(
    fake_upstream: FakeUpstream, replicated_database: ReplicatedDatabase
) -> None:
    # Two proxies on the same databases: one tolerates an hour of lag, one a second.
    patient = replica_proxy(fake_upstream, replicated_database, max_lag=3600)
    strict = replica_proxy(fake_upstream, replicated_database, max_lag=1)
    async with patient as tolerant, strict as demanding:
        await send(tolerant, 2)
        await until(listed(demanding), lambda r: count(r) == 2 and r.headers[SOURCE] == "replica")
        replicated_database.servers.pause_replay()
        await send(tolerant, 3)
        await stored_on_primary(replicated_database, 5)

        # The patient proxy answers from the paused replica: the 2 records it has replayed,
        # and a lag that grows past a second to say how old that is.
        stale = await until(listed(tolerant), lambda r: float(r.headers.get(LAG, 0)) > 1.5)
        assert stale.headers[SOURCE] == "replica" and count(stale) == 2
        # The strict one reads the primary instead: all 5, and why.
        fresh = await until(listed(demanding), lambda r: r.headers[SOURCE] == "primary")
        assert count(fresh) == 5 and float(fresh.headers[LAG]) > 1
        strict_ready = (await demanding.api.get("/readyz")).json()
        patient_ready = (await tolerant.api.get("/readyz")).json()
        strict_metrics = gauges((await demanding.api.get("/metrics")).text)
        patient_metrics = gauges((await tolerant.api.get("/metrics")).text)
        lookup = await tolerant.api.get(f"/usage/requests/{fresh.json()['data'][0]['id']}")

        replicated_database.servers.resume_replay()
        caught_up = await until(
            listed(demanding), lambda r: r.headers[SOURCE] == "replica" and count(r) == 5
        )
        patient_after = await until(listed(tolerant), lambda r: count(r) == 5)

    assert strict_ready["status"] == "ready"  # a lagging replica never makes the proxy unready
    assert strict_ready["read_replica"] | {"lag_seconds": None} == {
        "state": "lagging",
        "lag_seconds": None,
        "max_lag_seconds": 1.0,
        "reads_from": "primary",
    }
    assert patient_ready["read_replica"]["state"] == "streaming"
    assert strict_metrics["tallyproxy_read_replica_serving"] == 0
    assert strict_metrics["tallyproxy_read_replica_lag_seconds"] > 1
    assert patient_metrics["tallyproxy_read_replica_serving"] == 1
    assert patient_ready["read_replica"]["reads_from"] == "replica"
    # A record the paused replica lacks is looked up on the primary rather than a 404.
    assert lookup.status_code == 200 and lookup.headers[SOURCE] == "primary"
    assert float(caught_up.headers[LAG]) <= 1
    assert patient_after.headers[SOURCE] == "replica"


async def test_a_stopped_standby_leaves_reads_to_the_primary_with_one_warning(
    fake_upstream: FakeUpstream,
    replicated_database: ReplicatedDatabase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    standby = replicated_database.servers.standby
    async with replica_proxy(fake_upstream, replicated_database) as proxy:
        await send(proxy, 2)
        await until(listed(proxy), lambda r: count(r) == 2 and r.headers[SOURCE] == "replica")
        standby.stop()
        await send(proxy, 2)
        # Every answer a 200, the first one after the stop included (its read on the replica
        # fails and is asked of the primary); the records sent since show up.
        answers = [await listed(proxy)() for _ in range(5)]
        fresh = await until(listed(proxy), lambda r: count(r) == 4)
        summary = await proxy.api.get("/usage/summary", params={"group_by": "model"})
        await asyncio.sleep(2.5)  # checks keep failing meanwhile: still a single warning
        ready = await proxy.api.get("/readyz")
        warnings = [r for r in caplog.records if r.name == "proxy.store.replica"]
        standby.start()
        # Back on the replica once it answers, within the bound (it may first be seconds
        # behind, as it replays what it missed), and in time with everything.
        back = await until(
            listed(proxy), lambda r: r.headers[SOURCE] == "replica" and count(r) == 4
        )

    assert all(a.status_code == 200 and a.headers[SOURCE] == "primary" for a in answers)
    assert fresh.headers[SOURCE] == "primary" and LAG not in fresh.headers
    assert summary.status_code == 200 and summary.json()["data"][0]["requests"] == 4
    assert ready.status_code == 200
    assert ready.json()["read_replica"]["state"] == "down"
    assert ready.json()["read_replica"]["reads_from"] == "primary"
    down = [r for r in warnings if r.levelno == logging.WARNING]
    assert len(down) == 1, [r.getMessage() for r in down]
    assert "reads go to the primary" in down[0].getMessage()
    assert down[0].exc_info is None
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("proxy")]
    assert float(back.headers[LAG]) <= 10


async def test_reads_stay_on_the_replica_while_the_primary_is_down(
    fake_upstream: FakeUpstream, replicated_database: ReplicatedDatabase
) -> None:
    primary = replicated_database.servers.primary
    async with replica_proxy(fake_upstream, replicated_database, max_lag=1) as proxy:
        await send(proxy, 3)
        await until(listed(proxy), lambda r: count(r) == 3 and r.headers[SOURCE] == "replica")
        primary.stop()
        # Long past the bound: an old answer flagged by its lag beats a 503.
        old = await until(listed(proxy), lambda r: float(r.headers[LAG]) > 2)
        summary = await proxy.api.get("/usage/summary", params={"group_by": "day"})
        primary.start()
        await until(listed(proxy), lambda r: float(r.headers.get(LAG, 9)) <= 1)

    assert old.headers[SOURCE] == "replica" and count(old) == 3
    assert summary.status_code == 200 and summary.headers[SOURCE] == "replica"
    assert summary.json()["data"][0]["requests"] == 3


def report(database: ReplicatedDatabase, config: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "report", "--config", str(config), "--format",
               "json", "--database-url", database.primary_url,
               "--database-read-url", database.standby_url]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def lag_config(path: Path, max_lag: float) -> Path:
    path.write_text(f"database:\n  read_max_lag_seconds: {max_lag}\n")
    return path


async def test_report_reads_the_replica_unless_it_lags(
    replicated_database: ReplicatedDatabase, tmp_path: Path
) -> None:
    engine = create_engine(replicated_database.primary_url)
    try:
        await upgrade_database(engine)
        now = datetime.now(UTC)
        await write_records(engine, [make_record(created_at=now, model="gpt-4o")])
        await write_records(engine, [make_record(created_at=now, model="o3-mini")])
        replicated_database.servers.wait_replayed()
        replicated_database.servers.pause_replay()
        more = [make_record(created_at=now, model="gpt-4o") for _ in range(3)]
        await write_records(engine, more)
    finally:
        await engine.dispose()
    # The standby's own measure: since the last transaction it replayed, past the 1 s bound.
    deadline = time.monotonic() + 30
    since_replay = "SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())"
    while await replicated_database.fetchval(since_replay, on="standby") <= 1.5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)

    patient = await asyncio.to_thread(
        report, replicated_database, lag_config(tmp_path / "p.yaml", 3600)
    )
    strict = await asyncio.to_thread(
        report, replicated_database, lag_config(tmp_path / "s.yaml", 1)
    )

    assert patient.returncode == 0, patient.stderr
    by_model = {row["key"]: row["requests"] for row in json.loads(patient.stdout)["data"]}
    assert by_model == {"gpt-4o": 1, "o3-mini": 1}  # what the paused standby has
    assert "reads go to the replica" in patient.stderr
    assert strict.returncode == 0, strict.stderr
    by_model = {row["key"]: row["requests"] for row in json.loads(strict.stdout)["data"]}
    assert by_model == {"gpt-4o": 4, "o3-mini": 1}  # the primary's
    assert "reads go to the primary" in strict.stderr and "Traceback" not in strict.stderr
