from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.queries import UsageQueries


@pytest.fixture
def queries(engine: AsyncEngine) -> UsageQueries:
    return UsageQueries(engine)
