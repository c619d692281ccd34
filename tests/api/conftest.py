from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.api.usage import usage_router
from proxy.store.queries import UsageQueries
from proxy.store.writer import RecordWriter
from tests.store.factory import identity


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The usage routes alone, with the state the real app gives them."""
    app = FastAPI()
    app.include_router(usage_router())
    app.state.queries = UsageQueries(engine)
    app.state.writer = RecordWriter(engine, identity)
    await app.state.writer.start()
    yield app
    await app.state.writer.stop()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
        yield client
