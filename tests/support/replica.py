"""A real PostgreSQL streaming replica for tests: a primary and a hot standby made from it.

The primary is a local throwaway :class:`PostgresServer` with ``wal_level = replica``, WAL
senders and a ``replicator`` role allowed to replicate from 127.0.0.1. The standby is made
the way an operator makes one, ``pg_basebackup -R`` (which writes ``standby.signal`` and
``primary_conninfo``) over a physical replication slot, so that a standby stopped mid-test
finds the WAL it missed when it starts again. Both run on 127.0.0.1 on their own ports, and
each has the watchdog of :class:`PostgresServer`: a test process that dies leaves neither
server nor files behind.

Always local, even when ``TALLYPROXY_TEST_POSTGRES_URL`` names a server for the other tests:
the tests need to pause, stop and start the standby.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]

from tests.support.postgres import PostgresServer, _run_coroutine

__all__ = ["REPLICATION_USER", "ReplicatedDatabase", "ReplicatedPostgres", "StandbyServer"]

REPLICATION_USER = "replicator"
SLOT = "tallyproxy_test_standby"
FLUSH_TABLE = "tallyproxy_wal_flush"
"""One row in the primary's ``postgres`` database, updated to force a WAL flush."""
PRIMARY_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    "shared_buffers": "32MB",
}
STANDBY_SETTINGS = {
    "hot_standby": "on",
    "shared_buffers": "32MB",
    # The tests pause replay for a while: a query must not be cancelled meanwhile.
    "max_standby_streaming_delay": "-1",
    "wal_receiver_status_interval": "1s",
}


class StandbyServer(PostgresServer):
    """A hot standby of ``primary``, copied from it by ``pg_basebackup -R``."""

    def __init__(self, primary: PostgresServer) -> None:
        super().__init__(settings=STANDBY_SETTINGS)
        self.primary = primary

    def _create_cluster(self) -> None:
        self._run(
            "pg_basebackup",
            "-h",
            self.primary.host,
            "-p",
            str(self.primary.port),
            "-U",
            REPLICATION_USER,
            "-D",
            str(self.data_dir),
            "-R",  # standby.signal and primary_conninfo: it starts as a standby
            "-X",
            "stream",
            "-C",
            "-S",
            SLOT,
            "-c",
            "fast",
            "--no-sync",
            timeout=120.0,
        )


class ReplicatedPostgres:
    """A primary and its streaming standby, started together and closed together."""

    def __init__(self) -> None:
        self.primary = PostgresServer(settings=PRIMARY_SETTINGS)
        self.standby = StandbyServer(self.primary)

    def start(self) -> None:
        """Start the primary, let ``replicator`` replicate, then make and start the standby."""
        self.primary.start()
        self.primary.execute(f"CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN")
        with open(self.primary.data_dir / "pg_hba.conf", "a") as hba:
            hba.write(f"\nhost replication {REPLICATION_USER} 127.0.0.1/32 trust\n")
        self.primary.execute("SELECT pg_reload_conf()")
        self.primary.execute(f"CREATE TABLE {FLUSH_TABLE} AS SELECT 0 AS n")
        self.standby.start()

    def close(self) -> None:
        """Stop both and delete their files (standby first: it would retry its primary)."""
        try:
            self.standby.close()
        finally:
            self.primary.close()

    def create_database(self) -> str:
        """A new database on the primary, returned once the standby has it too."""
        name = self.primary.create_database()
        self.wait_replayed()
        return name

    def pause_replay(self) -> None:
        """The standby keeps receiving WAL but applies none of it: its data stands still."""
        self.standby.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.standby.execute("SELECT pg_wal_replay_resume()")

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        _run_coroutine(self._wait_replayed(deadline=time.monotonic() + timeout))

    async def _wait_replayed(self, deadline: float) -> None:
        primary = await asyncpg.connect(self.primary.dsn(), timeout=10)
        try:
            # The test server commits asynchronously: the WAL of a commit that has returned
            # may not be written yet. A synchronous commit flushes all WAL before it, but only
            # that of a transaction that wrote some (a bare txid_current() commits lazily).
            await primary.execute("SET synchronous_commit = on")
            await primary.execute(f"UPDATE {FLUSH_TABLE} SET n = n + 1")
            target = await primary.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        finally:
            await primary.close()
        standby = await asyncpg.connect(self.standby.dsn(), timeout=10)
        try:
            while True:
                replayed = await standby.fetchval("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn")
                if replayed is not None and replayed >= target:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"standby replayed {replayed} of {target} WAL bytes")
                await asyncio.sleep(0.05)
        finally:
            await standby.close()


@dataclass(frozen=True, slots=True)
class ReplicatedDatabase:
    """One fresh database on the primary, and the same database on its standby."""

    servers: ReplicatedPostgres
    name: str

    @property
    def primary_url(self) -> str:
        return self.servers.primary.url(self.name)

    @property
    def standby_url(self) -> str:
        return self.servers.standby.url(self.name)

    async def fetchval(self, sql: str, *, on: Literal["primary", "standby"]) -> Any:
        """One value from either server, on a connection of its own."""
        server = self.servers.primary if on == "primary" else self.servers.standby
        connection = await asyncpg.connect(server.dsn(self.name), timeout=10)
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()
