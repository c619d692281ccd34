"""A running tallyproxy in front of the fake provider, and the clients that talk to it."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import Settings, load_settings
from proxy.fastpath import ProxyFastPath
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import run_asgi_server_async


@dataclass
class RunningProxy:
    url: str
    settings: Settings
    api: httpx.AsyncClient
    sdk: openai.AsyncOpenAI

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def records(self, count: int, wait: float = 5.0, **filters: Any) -> list[dict[str, Any]]:
        """Wait until the usage API lists ``count`` records (newest first) and return them."""
        deadline = time.monotonic() + wait
        while True:
            response = await self.api.get("/usage/requests", params={"limit": 1000, **filters})
            response.raise_for_status()
            data: list[dict[str, Any]] = response.json()["data"]
            if len(data) >= count or time.monotonic() > deadline:
                assert len(data) == count, f"{len(data)} records stored, expected {count}"
                return data
            await asyncio.sleep(0.02)

    async def record(self, record_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5.0
        while True:
            response = await self.api.get(f"/usage/requests/{record_id}")
            if response.status_code == 200 or time.monotonic() > deadline:
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body
            await asyncio.sleep(0.02)


def proxy_settings(upstream_url: str, database_url: str, **extra: Any) -> Settings:
    overrides = {("upstream", "url"): upstream_url, ("database", "url"): database_url}
    # Each proxy its own spool: a spool left in the working directory would be replayed.
    overrides[("database", "spool_dir")] = tempfile.mkdtemp(prefix="tally-spool-")
    overrides |= {tuple(key.split("__")): value for key, value in extra.items()}
    return load_settings(None, overrides, environ={})


@pytest.fixture
async def proxy(fake_upstream: FakeUpstream, database_url: str) -> AsyncIterator[RunningProxy]:
    async with start_proxy(proxy_settings(fake_upstream.base_url, database_url)) as running:
        yield running


@pytest.fixture
async def sqlite_proxy(fake_upstream: FakeUpstream, tmp_path: Any) -> AsyncIterator[RunningProxy]:
    """For behaviour that does not depend on the database: SQLite only, to keep the suite fast."""
    settings = proxy_settings(fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/t.db")
    async with start_proxy(settings) as running:
        yield running


class start_proxy:  # lower case: used like a function, `async with start_proxy(settings)`
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # What `tallyproxy serve` runs: the app behind its /v1 fast path.
        app = ProxyFastPath(create_app(settings))
        self.server = run_asgi_server_async(app, graceful_timeout=5.0)

    async def __aenter__(self) -> RunningProxy:
        url = await self.server.__aenter__()
        self.running = RunningProxy(
            url=url,
            settings=self.settings,
            api=httpx.AsyncClient(base_url=url, timeout=10),
            sdk=openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test-client", max_retries=0),
        )
        return self.running

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.running.sdk.close()
        await self.running.api.aclose()
        await self.server.__aexit__(*exc_info)
