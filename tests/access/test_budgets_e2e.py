"""Budgets through a running proxy: a burst of SDK requests against a small USD budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from proxy.config import Settings
from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY, issue_key
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MODEL = "budget-test-model"
# $100 per 1M input tokens, $1000 per 1M output: one answer of the fake (19 in, 10 out) costs
# 0.0019 + 0.01 = $0.0119; a request with max_tokens=10 reserves its counted input + $0.01.
PRICES = [{"model": MODEL, "input": 100, "output": 1000}]
REQUEST_COST = Decimal("0.0119")
MESSAGES = [{"role": "user", "content": "hi"}]


def priced_settings(fake_upstream: FakeUpstream, database_url: str, **extra: Any) -> Settings:
    fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)
    return proxy_settings(
        fake_upstream.base_url,
        database_url,
        upstream__api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN,
        **{"prices": PRICES, **extra},
    )


@pytest.fixture
async def priced_proxy(
    fake_upstream: FakeUpstream, database_url: str
) -> AsyncIterator[RunningProxy]:
    async with start_proxy(priced_settings(fake_upstream, database_url)) as running:
        running.api.headers.update(ADMIN)
        yield running


@pytest.fixture
async def anonymous_priced_proxy(
    fake_upstream: FakeUpstream, database_url: str
) -> AsyncIterator[RunningProxy]:
    """Requests without a virtual key are let through, with the proxy's key."""
    settings = priced_settings(fake_upstream, database_url, access__allow_anonymous=True)
    async with start_proxy(settings) as running:
        running.api.headers.update(ADMIN)
        yield running


async def budgets_of(proxy: RunningProxy, key: str | None = None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else ADMIN
    response = await proxy.api.get("/usage/budgets", headers=headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def burst(base_url: str, key: str, count: int) -> list[str | None]:
    """``count`` concurrent SDK requests; each result is None (admitted) or the error code."""

    async def one(sdk: openai.AsyncOpenAI) -> str | None:
        try:
            await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
        except openai.RateLimitError as exc:
            return str(exc.code)
        return None

    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as sdk:
        return list(await asyncio.gather(*(one(sdk) for _ in range(count))))


async def settled(proxy: RunningProxy, admitted: int) -> dict[str, Any]:
    """The budget once every admitted request's record has been settled."""
    deadline = time.monotonic() + 10
    while True:
        [budget] = await budgets_of(proxy)
        done = Decimal(budget["spent_usd"]) == admitted * REQUEST_COST
        if (done and Decimal(budget["reserved_usd"]) == 0) or time.monotonic() > deadline:
            return budget
        await asyncio.sleep(0.05)


async def test_a_burst_overshoots_a_small_budget_by_at_most_one_request(
    priced_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    issued = await issue_key(priced_proxy.api, name="burst")
    created = await priced_proxy.api.post(
        "/admin/budgets",
        json={"scope": "key", "subject": issued["id"], "period": "day", "usd": "0.05",
              "name": "burst-day"},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    results = await burst(priced_proxy.base_url, issued["key"], 20)
    admitted = results.count(None)
    assert set(results) == {None, "budget_exceeded"}
    assert len(fake_upstream.requests) == admitted
    budget = await settled(priced_proxy, admitted)
    spent = Decimal(budget["spent_usd"])
    assert spent == admitted * REQUEST_COST
    assert spent - Decimal("0.05") <= REQUEST_COST  # overshoot: one request at most
    assert 3 <= admitted <= 5
    assert Decimal(budget["reserved_usd"]) == 0
    assert budget["resets_at"] is not None and budget["period"] == "day"
    # The key sees its own budget; refused requests name it.
    assert [b["name"] for b in await budgets_of(priced_proxy, issued["key"])] == ["burst-day"]
    async with openai.AsyncOpenAI(
        base_url=priced_proxy.base_url, api_key=issued["key"], max_retries=0
    ) as sdk:
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert refused.value.code == "budget_exceeded"
    assert "budget 'burst-day'" in refused.value.message
    assert refused.value.status_code == 429
    # The refusal's request id names its record: a 429 without usage that cost nothing.
    record = await priced_proxy.record(refused.value.response.headers["x-tally-request-id"])
    assert (record["status_code"], record["cost_usd"], record["usage_source"]) == (429, "0", None)
    assert (record["total_tokens"], record["price_source"], record["key_id"]) == (
        None,
        None,
        issued["id"],
    )
    assert "budget 'burst-day'" in record["error"]
    # Every refusal of the burst is recorded too, and none of them spent anything.
    records = await priced_proxy.records(len(results) + 1)
    assert [r["status_code"] for r in records].count(429) == len(results) - admitted + 1
    [after] = await budgets_of(priced_proxy, issued["key"])
    assert after["spent_usd"] == budget["spent_usd"]


async def burst_without_max_tokens(
    proxy: RunningProxy, count: int, **fields: Any
) -> list[str | None]:
    """``count`` concurrent requests naming no output limit; None (admitted) or the error code."""

    async def one() -> str | None:
        try:
            await proxy.sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **fields)
        except openai.RateLimitError as exc:
            return str(exc.code)
        return None

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def answered_records(proxy: RunningProxy, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` records of answered requests (refusals are recorded too)."""
    deadline = time.monotonic() + 5
    while True:
        response = await proxy.api.get("/usage/requests", params={"limit": 1000})
        response.raise_for_status()
        data = [r for r in response.json()["data"] if r["status_code"] == 200]
        if len(data) >= count or time.monotonic() > deadline:
            assert len(data) == count, f"{len(data)} answered requests stored, expected {count}"
            return data
        await asyncio.sleep(0.02)


async def spent_once_settled(proxy: RunningProxy, admitted: int) -> dict[str, Any]:
    """The one budget once the records of ``admitted`` requests are stored and settled."""
    await answered_records(proxy, admitted)
    deadline = time.monotonic() + 10
    while True:
        [budget] = await budgets_of(proxy)
        done = Decimal(budget["reserved_usd"]) == 0 and budget["reserved_tokens"] == 0
        if done or time.monotonic() > deadline:
            return budget
        await asyncio.sleep(0.05)


@pytest.fixture
async def unbounded_proxy(
    fake_upstream: FakeUpstream, database_url: str
) -> AsyncIterator[RunningProxy]:
    """Anonymous pass-through; a request without max_tokens reserves 20 output tokens (the
    test model is not in the model table, so budgets.default_max_output_tokens applies)."""
    settings = priced_settings(
        fake_upstream,
        database_url,
        access__allow_anonymous=True,
        budgets__default_max_output_tokens=20,
    )
    async with start_proxy(settings) as running:
        running.api.headers.update(ADMIN)
        yield running


@pytest.mark.parametrize("limit", [{"usd": "0.05"}, {"tokens": 100}], ids=["usd", "tokens"])
async def test_a_burst_without_max_tokens_overshoots_by_at_most_one_request(
    unbounded_proxy: RunningProxy, fake_upstream: FakeUpstream, limit: dict[str, Any]
) -> None:
    # Slow answers: every reservation is made before the first record settles, as under load.
    fake_upstream.scenario, fake_upstream.delay_ms = "slow", 300
    created = await unbounded_proxy.api.post(
        "/admin/budgets",
        json={"scope": "user", "subject": "eve", "period": "day", **limit},
    )
    assert created.status_code == 201, created.text
    results = await burst_without_max_tokens(unbounded_proxy, 20, user="eve")
    admitted = results.count(None)
    assert set(results) == {None, "budget_exceeded"}
    assert admitted >= 1
    budget = await spent_once_settled(unbounded_proxy, admitted)
    if "usd" in limit:
        overshoot = Decimal(budget["spent_usd"]) - Decimal(limit["usd"])
        assert overshoot <= REQUEST_COST, f"{admitted} admitted, {budget['spent_usd']} USD spent"
    else:
        overshoot_tokens = budget["spent_tokens"] - limit["tokens"]
        assert overshoot_tokens <= fake_upstream.usage.total_tokens, (
            f"{admitted} admitted, {budget['spent_tokens']} tokens spent"
        )


async def test_budget_refusals_tell_sdks_not_to_retry(
    unbounded_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    created = await unbounded_proxy.api.post(
        "/admin/budgets",
        json={"scope": "user", "subject": "ivy", "period": "day", "usd": "0.001"},
    )
    assert created.status_code == 201, created.text
    # The SDK's default of two retries: it would send three requests without the header.
    async with openai.AsyncOpenAI(base_url=unbounded_proxy.base_url, api_key="x") as sdk:
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, user="ivy")
    assert refused.value.response.headers["x-should-retry"] == "false"
    records = await unbounded_proxy.records(1)
    assert [r["status_code"] for r in records] == [429]
    assert records[0]["id"] == refused.value.response.headers["x-tally-request-id"]
    assert fake_upstream.requests == []


@pytest.mark.parametrize("policy", ["refuse", "allow"])
async def test_a_model_without_a_price_against_a_usd_budget(
    fake_upstream: FakeUpstream, database_url: str, policy: str
) -> None:
    settings = priced_settings(
        fake_upstream, database_url, access__allow_anonymous=True, budgets__unpriced=policy
    )
    async with start_proxy(settings) as proxy:
        proxy.api.headers.update(ADMIN)
        for limit in ({"usd": "5"}, {"tokens": 100000}):
            created = await proxy.api.post(
                "/admin/budgets",
                json={"scope": "user", "subject": "uma", "period": "day", **limit},
            )
            assert created.status_code == 201, created.text
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="x", max_retries=0) as sdk:
            call = sdk.chat.completions.create(
                model="model-without-a-price", messages=MESSAGES, max_tokens=10, user="uma"
            )
            if policy == "allow":
                await call
                assert len(fake_upstream.requests) == 1
                return
            with pytest.raises(openai.RateLimitError) as refused:
                await call
    assert refused.value.code == "budget_exceeded"
    assert "'model-without-a-price' has no price" in refused.value.message
    assert "budgets.unpriced" in refused.value.message
    assert fake_upstream.requests == []


async def test_budgets_on_users_and_tokens_apply_without_virtual_keys(
    anonymous_priced_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    priced_proxy = anonymous_priced_proxy
    created = await priced_proxy.api.post(
        "/admin/budgets",
        json={"scope": "user", "subject": "carol", "period": "total", "tokens": 60},
    )
    assert created.status_code == 201, created.text
    sdk = priced_proxy.sdk  # the client's own provider key: pass-through
    for _ in range(2):  # 29 tokens each; the reservation (input + 10) fits twice
        await sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, user="carol"
        )
    await answered_records(priced_proxy, 2)
    deadline = time.monotonic() + 5
    while True:  # settled from the records
        [budget] = await budgets_of(priced_proxy)
        if budget["spent_tokens"] >= 58 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(openai.RateLimitError):
        await sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, user="carol"
        )
    await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, user="dave")
    [budget] = await budgets_of(priced_proxy)
    assert (budget["spent_tokens"], budget["remaining_tokens"], budget["resets_at"]) == (
        58,
        2,
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"scope": "key", "period": "day", "usd": "1"},
        {"scope": "global", "subject": "x", "period": "day", "usd": "1"},
        {"scope": "user", "subject": "x", "period": "week", "usd": "1"},
        {"scope": "user", "subject": "x", "period": "day"},
        {"scope": "user", "subject": "x", "period": "day", "usd": "1", "tokens": 5},
        {"scope": "user", "subject": "x", "period": "day", "usd": "-1"},
    ],
)
async def test_invalid_budgets_are_refused(
    priced_proxy: RunningProxy, body: dict[str, Any]
) -> None:
    response = await priced_proxy.api.post("/admin/budgets", json=body)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ({"usd": 1e30}, "usd"),
        ({"usd": "1e18"}, "usd"),
        ({"usd": "Infinity"}, "usd"),
        ({"usd": "NaN"}, "usd"),
        ({"tokens": 1e20}, "tokens"),
        ({"tokens": 2**63}, "tokens"),
    ],
)
async def test_limits_beyond_what_the_database_holds_are_a_400_naming_the_field(
    priced_proxy: RunningProxy, limit: dict[str, Any], field: str
) -> None:
    body = {"scope": "user", "subject": "x", "period": "day", **limit}
    response = await priced_proxy.api.post("/admin/budgets", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
    assert await budgets_of(priced_proxy) == []


async def test_the_largest_limits_the_database_holds_are_accepted(
    priced_proxy: RunningProxy, database_url: str
) -> None:
    sqlite = database_url.startswith("sqlite")
    usd = "9223372.036854775807" if sqlite else "999999999999999999.999999999999"
    # Just past the bound is refused by the store: SQLite's is far below NUMERIC(30, 12)'s.
    past = "9223372.036854775808" if sqlite else "1000000000000000000"
    body = {"scope": "user", "subject": "y", "period": "day", "usd": past}
    response = await priced_proxy.api.post("/admin/budgets", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "usd"
    for limit in ({"usd": usd}, {"tokens": 2**63 - 1}):
        body = {"scope": "user", "subject": "x", "period": "day", **limit}
        response = await priced_proxy.api.post("/admin/budgets", json=body)
        assert response.status_code == 201, response.text
    limits = sorted(
        str(b["limit_usd"] or b["limit_tokens"]) for b in await budgets_of(priced_proxy)
    )
    assert limits == sorted([usd, str(2**63 - 1)])
