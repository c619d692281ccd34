"""The upstream resets streams mid-body under load: every answer the client got has a record,
the cut ones partial with an error, and session totals still add up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx

from tests.e2e.conftest import proxy_settings, start_proxy
from tests.resilience.load import SESSIONS, assert_sessions_match, wait_for_records
from tests.support.fake_upstream import FakeUpstream

log = logging.getLogger(__name__)

REQUESTS = 240
CONCURRENCY = 16


async def one(client: httpx.AsyncClient, index: int, answered: dict[str, str]) -> None:
    kind = ("cut", "stream", "json", "slow")[index % 4]
    scenario = {"cut": "cut,chunks=8", "slow": "slow,chunks=8"}.get(kind, "")
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"request {index}"}],
        "stream": kind != "json",
    }
    headers = {"X-Session-Id": SESSIONS[index % len(SESSIONS)], "X-Fake-Delay-Ms": "5"}
    if scenario:
        headers["X-Fake-Scenario"] = scenario
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        answered[r.headers["x-tally-request-id"]] = kind
        with contextlib.suppress(httpx.HTTPError):  # the cut reaches the client as an error
            await r.aread()


async def test_upstream_resets_mid_stream_under_load(
    fake_upstream: FakeUpstream, database_url: str
) -> None:
    answered: dict[str, str] = {}
    async with start_proxy(proxy_settings(fake_upstream.base_url, database_url)) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
            queue = iter(range(REQUESTS))

            async def worker() -> None:
                for index in queue:
                    await one(client, index, answered)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        records = await wait_for_records(proxy.api, len(answered))
        stats = (await proxy.api.get("/readyz")).json()
        await assert_sessions_match(proxy.api, records)
    by_id = {r["id"]: r for r in records}
    cut = [by_id[i] for i, kind in answered.items() if kind == "cut"]
    whole = [by_id[i] for i, kind in answered.items() if kind != "cut"]
    log.warning(
        "resets under load: sent %d, answered %d, stored %d, cut %d (partial %d), whole %d",
        REQUESTS,
        len(answered),
        len(records),
        len(cut),
        sum(r["usage_source"] == "partial" for r in cut),
        len(whole),
    )
    assert len(answered) == REQUESTS
    assert sorted(by_id) == sorted(answered) and len(records) == len(by_id)
    assert stats["dropped_total"] == 0
    assert all(r["usage_source"] == "partial" and r["error"] for r in cut), cut[:2]
    assert all(r["usage_source"] == "provider" and r["error"] is None for r in whole)
    assert all(r["completion_tokens"] for r in cut)  # what was produced before the cut counts
