"""Budget actions through a running proxy: downgrade to a cheaper model past a threshold,
refuse early past another, decided from what the replica already knows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from proxy.spend.actions import ActionError, parse_actions
from tests.access.conftest import ADMIN
from tests.access.test_budgets_e2e import MESSAGES, MODEL, PRICES, priced_settings
from tests.e2e.conftest import RunningProxy, start_proxy
from tests.support.fake_upstream import FakeUpstream

MINI = "budget-test-mini"
# The fake's answer (19 in, 10 out) costs $0.0119 as MODEL and $0.000119 as MINI.
MINI_COST = Decimal("0.000119")


@pytest.fixture
async def proxy(fake_upstream: FakeUpstream, database_url: str) -> AsyncIterator[RunningProxy]:
    settings = priced_settings(
        fake_upstream,
        database_url,
        access__allow_anonymous=True,
        prices=[*PRICES, {"model": MINI, "input": 1, "output": 10}],
    )
    async with start_proxy(settings) as running:
        running.api.headers.update(ADMIN)
        yield running


async def create(proxy: RunningProxy, **fields: Any) -> dict[str, Any]:
    response = await proxy.api.post("/admin/budgets", json={"period": "day", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_past_the_threshold_requests_go_out_as_the_cheaper_model(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    actions = [{"at": 50, "downgrade": {"gpt-4o": "gpt-4o-mini", "budget-test-m*": MINI}}]
    created = await create(proxy, scope="user", subject="zed", usd="0.05", actions=actions)
    assert created["actions"] == actions
    downgraded: list[str | None] = []
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="x", max_retries=0) as sdk:
        for n in range(6):
            raw = await sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=10, user="zed", stream=n % 2 == 1
            )
            downgraded.append(raw.headers.get("x-tally-downgraded-from"))
            answer = raw.parse()
            if n % 2 == 1:  # a stream: read it to the end
                async for _ in answer:  # type: ignore[union-attr]
                    pass
    sent = [request.json()["model"] for request in fake_upstream.requests]
    # Each request reserves ~$0.0108: the third starts past 50 % of $0.05.
    assert sent[:2] == [MODEL, MODEL]
    assert MINI in sent
    first = sent.index(MINI)
    assert sent[first:] == [MINI] * (6 - first)
    assert downgraded == [None] * first + [MODEL] * (6 - first)
    # The stream keeps its usage request through the change of model.
    assert all(
        request.json().get("stream_options") == {"include_usage": True}
        for request in fake_upstream.requests
        if request.json().get("stream")
    )
    records = sorted(await proxy.records(6), key=lambda r: r["created_at"])
    assert [r["model"] for r in records] == sent
    assert [r["downgraded_from"] for r in records] == [None] * first + [MODEL] * (6 - first)
    assert {r["cost_usd"] for r in records[first:]} == {str(MINI_COST)}
    response = await proxy.api.get("/usage/budgets")
    [budget] = response.json()["data"]
    assert Decimal(budget["spent_usd"]) == first * Decimal("0.0119") + (6 - first) * MINI_COST


async def test_a_refuse_action_refuses_before_the_limit(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    await create(
        proxy, scope="user", subject="amy", tokens=100, actions=[{"at": 50, "refuse": True}]
    )
    results: list[str | None] = []
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="x", max_retries=0) as sdk:
        for _ in range(4):
            try:
                await sdk.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=10, user="amy"
                )
                results.append(None)
            except openai.RateLimitError as exc:
                assert "refuses requests past 50% of its limit" in exc.message
                assert exc.response.headers["x-should-retry"] == "false"
                results.append(str(exc.code))
    # ~18 tokens held per request: the fourth starts past 50 tokens.
    assert results[0] is None and results[-1] == "budget_exceeded"
    assert len(fake_upstream.requests) == results.count(None)
    # Other users' requests are not touched.
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="x", max_retries=0) as sdk:
        await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, user="bo")


@pytest.mark.parametrize(
    ("actions", "problem"),
    [
        ({"at": 80}, "must be a list"),
        ([{"at": 0, "refuse": True}], "actions[0].at"),
        ([{"at": 80}], "does nothing"),
        ([{"at": 80, "downgrade": {"gpt-4o": ""}}], "actions[0].downgrade"),
        ([{"at": 80, "refuse": "yes"}], "actions[0].refuse"),
        ([{"at": 80, "refuse": True, "cap": 1}], "actions[0] must be an object"),
    ],
)
async def test_bad_actions_get_a_400_naming_them(
    proxy: RunningProxy, actions: Any, problem: str
) -> None:
    with pytest.raises(ActionError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_actions(actions)
    response = await proxy.api.post(
        "/admin/budgets",
        json={"scope": "global", "period": "day", "usd": "1", "actions": actions},
    )
    assert response.status_code == 400, response.text
    assert problem in response.json()["error"]["message"]
