"""The replica monitor against a real primary and standby, on a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.replica import ReplicaMonitor
from tests.support.replica import ReplicatedDatabase

pytestmark = pytest.mark.postgres


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engines(
    replicated_database: ReplicatedDatabase,
) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    primary = create_engine(replicated_database.primary_url)
    standby = create_engine(replicated_database.standby_url)
    yield primary, standby
    await primary.dispose()
    await standby.dispose()


async def write(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        # The test server commits asynchronously: this commit must be written before the
        # monitor looks at the primary's WAL position.
        await connection.execute(text("SET LOCAL synchronous_commit = on"))
        await connection.execute(text("CREATE TABLE IF NOT EXISTS t (x int)"))
        await connection.execute(text("INSERT INTO t VALUES (1)"))


async def test_a_paused_replica_ages_on_the_monitors_clock_until_reads_leave_it(
    replicated_database: ReplicatedDatabase, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    primary, standby = engines
    servers, clock = replicated_database.servers, Clock()
    monitor = ReplicaMonitor(primary, standby, max_lag=2.0, clock=clock)
    first = await monitor.check()
    assert (first.state, first.lag_seconds, monitor.route()) == ("streaming", 0.0, "replica")

    servers.pause_replay()
    await write(primary)
    clock.now += 1.5  # the primary moved on; the standby is as of the last check
    behind = await monitor.check()
    assert (behind.state, behind.lag_seconds, monitor.route()) == ("streaming", 1.5, "replica")
    clock.now += 1.0
    further = await monitor.check()
    assert (further.state, further.lag_seconds, monitor.route()) == ("lagging", 2.5, "primary")

    servers.resume_replay()
    servers.wait_replayed()
    clock.now += 1.0
    again = await monitor.check()
    assert (again.state, again.lag_seconds, monitor.route()) == ("streaming", 0.0, "replica")
    clock.now += 10.0  # no check since: its word is too old to send reads to the replica
    assert monitor.route() == "primary"


async def test_down_and_back_and_a_primary_given_as_replica(
    replicated_database: ReplicatedDatabase, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    primary, standby = engines
    monitor = ReplicaMonitor(primary, standby, max_lag=2.0, clock=Clock())
    replicated_database.servers.standby.stop()
    down = await monitor.check()
    assert (down.state, down.lag_seconds, monitor.route()) == ("down", None, "primary")
    assert "ConnectionRefusedError" in down.detail
    replicated_database.servers.standby.start()
    assert (await monitor.check()).state == "streaming"
    assert monitor.route() == "replica"

    mistaken = ReplicaMonitor(primary, primary, max_lag=2.0, clock=Clock())
    assert (await mistaken.check()).state == "not_a_standby"
    assert mistaken.route() == "primary"
