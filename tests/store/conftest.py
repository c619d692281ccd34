from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.queries import UsageQueries


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database of each kind."""
    engine = create_engine(database_url)
    await upgrade_database(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def queries(engine: AsyncEngine) -> UsageQueries:
    return UsageQueries(engine)
