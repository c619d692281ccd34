"""Each upstream its own connection pool: a full one answers 503 and blocks nobody else."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream

BUSY_POOL = 2


def pool_gauge(exposition: str, metric: str, name: str) -> float:
    match = re.search(rf'^{metric}{{name="{name}",upstream="[^"]*"}} (\S+)$', exposition, re.M)
    assert match, f"{metric} for {name} not in /metrics"
    return float(match.group(1))


async def gauge(proxy: RunningProxy, metric: str, name: str) -> float:
    return pool_gauge((await proxy.api.get("/metrics")).text, metric, name)


async def until_gauge(proxy: RunningProxy, metric: str, name: str, value: float) -> None:
    deadline = time.monotonic() + 10
    while await gauge(proxy, metric, name) != value:
        assert time.monotonic() < deadline, f"{metric}{{name={name}}} never reached {value}"
        await asyncio.sleep(0.02)


def chat(proxy: RunningProxy, model: str, **extra: Any) -> Any:
    return proxy.sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **extra
    )


async def test_a_full_pool_answers_503_and_blocks_no_other_upstream(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    routes = [
        {
            "name": "busy",
            "url": fake_upstream.base_url,
            "models": ["busy-*"],
            "max_connections": BUSY_POOL,
            "pool_timeout": 1.0,
        },
        {"name": "other", "url": fake_upstream.base_url, "max_connections": 1},
    ]
    settings = proxy_settings(
        fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/pools.db", upstreams=routes
    )
    async with start_proxy(settings) as proxy:
        assert await gauge(proxy, "tallyproxy_upstream_pool_max_connections", "busy") == 2
        # Streams that never end hold every connection of the busy upstream's pool.
        stalled = [
            await chat(proxy, "busy-1", stream=True, extra_headers={"X-Fake-Scenario": "stall"})
            for _ in range(BUSY_POOL)
        ]
        assert await gauge(proxy, "tallyproxy_upstream_pool_in_use", "busy") == BUSY_POOL

        waiting = asyncio.ensure_future(chat(proxy, "busy-1"))
        await until_gauge(proxy, "tallyproxy_upstream_pool_waiting", "busy", 1)
        # Another upstream's pool is its own: served at once, even by its single connection.
        for _ in range(3):
            reply = await chat(proxy, "gpt-4o-mini")
            assert reply.choices[0].message.content == fake_upstream.reply

        with pytest.raises(openai.APIStatusError) as refused:
            await waiting
        error = refused.value
        assert error.status_code == 503
        assert error.code == "upstream_pool_exhausted"
        assert "'busy'" in error.message and "max_connections" in error.message
        assert "pool_timeout" in error.message
        exposition = (await proxy.api.get("/metrics")).text
        assert pool_gauge(exposition, "tallyproxy_upstream_pool_exhausted_total", "busy") == 1
        assert pool_gauge(exposition, "tallyproxy_upstream_pool_waiting", "busy") == 0
        assert pool_gauge(exposition, "tallyproxy_upstream_pool_exhausted_total", "other") == 0

        for stream in stalled:
            await stream.close()
        await until_gauge(proxy, "tallyproxy_upstream_pool_in_use", "busy", 0)
        reply = await chat(proxy, "busy-1")
        assert reply.choices[0].message.content == fake_upstream.reply

        records = await proxy.records(BUSY_POOL + 1 + 3 + 1)
        (refused_record,) = [r for r in records if r["status_code"] == 503]
        assert refused_record["model"] == "busy-1"
        assert "connection pool for upstream 'busy'" in refused_record["error"]
    # One call per answered request: the refused one never reached the provider.
    assert len(fake_upstream.requests) == BUSY_POOL + 3 + 1
