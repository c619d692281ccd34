"""Fixtures every test may use: real databases, a fake provider, free ports.

- ``postgres_server`` (session): the :class:`PostgresServer`, local and throwaway unless
  ``TALLYPROXY_TEST_POSTGRES_URL`` names one started by CI.
- ``restartable_postgres`` (function): the same server, for tests that stop and start it; it
  skips on an external server and makes sure the server runs again afterwards.
- ``postgres_url`` (function): URL of a fresh empty database on it.
- ``database_url`` (function, ids ``sqlite`` and ``postgres``): a fresh database of each kind.
- ``engine`` / ``postgres_engine`` (function): an engine on that database, migrated.
- ``replicated_postgres`` (session): a local primary and its streaming standby
  (``pg_basebackup -R``), started on first use; ``replicated_database`` (function): a fresh
  database on both, with the standby running and replaying again afterwards.
- ``tokenizer_loads`` (function): the built-in vocabularies loaded during the test, in order.
- ``fake_upstream`` / ``fake_upstream_url`` (function): a running :class:`FakeUpstream` and its
  ``/v1`` base URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy import tokens
from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer
from tests.support.replica import ReplicatedDatabase, ReplicatedPostgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.from_environment()
    if not server.external:
        server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def restartable_postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    if postgres_server.external:
        pytest.skip(
            "needs to stop and start PostgreSQL, which the external server given by "
            "TALLYPROXY_TEST_POSTGRES_URL does not allow"
        )
    yield postgres_server
    postgres_server.start()  # whatever the test did, later tests need it running


@pytest.fixture(scope="session")
def replicated_postgres() -> Iterator[ReplicatedPostgres]:
    servers = ReplicatedPostgres()
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


@pytest.fixture
def replicated_database(replicated_postgres: ReplicatedPostgres) -> Iterator[ReplicatedDatabase]:
    servers = replicated_postgres
    name = servers.create_database()
    yield ReplicatedDatabase(servers, name)
    # Whatever the test did to them, later tests need both running and the standby replaying.
    servers.primary.start()
    servers.standby.start()
    servers.resume_replay()
    servers.primary.drop_database(name)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    if not postgres_server.running:
        postgres_server.start()
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'tally.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@contextlib.asynccontextmanager
async def migrated_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    await upgrade_database(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database of each kind."""
    async with migrated_engine(database_url) as engine:
        yield engine


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine(postgres_url) as engine:
        yield engine


@pytest.fixture
def tokenizer_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loads: list[str] = []
    real = tokens.load_builtin

    def counting(name: str) -> tokens.Tokenizer:
        loads.append(name)
        return real(name)

    monkeypatch.setattr(tokens, "load_builtin", counting)
    return loads


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake_upstream_url(fake_upstream: FakeUpstream) -> str:
    return fake_upstream.base_url
