"""Requests that carry no tokens cost 0; ``unpriced_requests`` counts only billed ones.

``GET /v1/models`` and upstream errors used to count as unpriced (cost null), so a day of
rate-limit errors looked like a price gap. A successful call whose usage is unknown still
counts: it was billed at a cost nobody knows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import openai
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from proxy.commands.reprice import record_prices
from proxy.store.rebuild import rebuild_rollups
from proxy.store.reprice import reprice
from proxy.store.tables import requests, sessions
from tests.e2e.conftest import RunningProxy
from tests.store.rollup_truth import assert_rollups_match_raw_rows
from tests.support.fake_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]
SESSION = {"X-Session-Id": "unbilled"}


async def _send_each_kind(proxy: RunningProxy) -> None:
    sdk = proxy.sdk.with_options(max_retries=0)
    await sdk.models.list(extra_headers=SESSION)
    for status in (400, 429, 500):
        with pytest.raises(openai.APIStatusError):
            await sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                extra_headers={**SESSION, "X-Fake-Scenario": f"error-{status}"},
            )
    # Billed per image, and DALL-E 3 answers without usage: its cost is not known.
    await sdk.images.generate(model="dall-e-3", prompt="a cat", extra_headers=SESSION)


async def test_requests_without_tokens_cost_nothing(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    await _send_each_kind(proxy)
    records = await proxy.records(5)
    costs = sorted((r["method"], r["status_code"], r["model"], r["cost_usd"]) for r in records)
    assert costs == [
        ("GET", 200, None, "0"),
        ("POST", 200, "dall-e-3", None),
        ("POST", 400, "gpt-4o-mini", "0"),
        ("POST", 429, "gpt-4o-mini", "0"),
        ("POST", 500, "gpt-4o-mini", "0"),
    ]
    by_model = (await proxy.api.get("/usage/summary", params={"group_by": "model"})).json()
    unpriced = {row["key"]: row["unpriced_requests"] for row in by_model["data"]}
    assert unpriced == {None: 0, "gpt-4o-mini": 0, "dall-e-3": 1}
    session = (await proxy.api.get("/usage/sessions/unbilled")).json()
    assert (session["requests"], session["unpriced_requests"]) == (5, 1)


async def test_reprice_gives_older_unbilled_records_cost_0(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    await _send_each_kind(proxy)
    await proxy.records(5)
    engine = create_async_engine(proxy.settings.database.url)
    try:
        # As written before the rule: every record without tokens unpriced, in the session too.
        async with engine.begin() as connection:
            await connection.execute(update(requests).values(cost_usd=None))
            await connection.execute(update(sessions).values(cost_usd=None, unpriced_requests=5))
        await rebuild_rollups(engine)
        since = datetime.now(UTC) - timedelta(hours=1)
        report = await reprice(engine, record_prices(proxy.settings), since=since)
        await assert_rollups_match_raw_rows(engine)
    finally:
        await engine.dispose()
    assert (report.examined, report.changed) == (5, 4)
    session = (await proxy.api.get("/usage/sessions/unbilled")).json()
    assert (session["unpriced_requests"], session["cost_usd"]) == (1, "0")
