"""``/usage/prices?model=`` shows the rates requests for that model are charged at.

Each case sends a request through the proxy (routed as configured: a DeepSeek upstream, the
config's own prices, OpenAI for the rest), then prices the usage the fake reported with the
rates ``/usage/prices`` shows, and expects the record's cost to the last decimal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from proxy.commands.reprice import record_prices
from proxy.store.reprice import reprice
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

CHAT = FakeUsage(prompt_tokens=1000, cached_tokens=200, completion_tokens=500)
EMBEDDING = FakeUsage(prompt_tokens=1000, completion_tokens=0)
CASES = [
    # model, endpoint, usage, where its price comes from (source, priced as)
    ("gpt-4o-2024-08-06", "chat", CHAT, ("genai-prices", "gpt-4o")),
    ("gpt-4o-mini", "chat", CHAT, ("genai-prices", "gpt-4o-mini")),
    # Listed under OpenAI only, found through the OpenAI upstream's provider hint: the API
    # used to answer 404 for it while requests were charged.
    ("text-embedding-3-small", "embeddings", EMBEDDING, ("genai-prices", "text-embedding-3-small")),
    ("deepseek-chat", "chat", CHAT, ("genai-prices", "deepseek-chat")),
    ("deepseek-reasoner", "chat", CHAT, ("genai-prices", "deepseek-reasoner")),
    ("house-llm-7b", "chat", CHAT, ("config", "house-*")),  # a glob of the config
    ("prod-4o", "chat", CHAT, ("genai-prices", "gpt-4o-mini")),  # an alias of the config
    ("deepseek-v9-house", "chat", CHAT, ("config", "deepseek-v9-house")),  # config beats a route
]


@pytest.fixture
async def routed_proxy(fake_upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[RunningProxy]:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/prices.db",
        upstreams=[
            {
                "name": "deepseek",
                "kind": "openai-compatible",
                "url": fake_upstream.base_url,
                "provider": "deepseek",
                "models": ["deepseek-*"],
            },
            {"name": "openai", "kind": "openai", "url": fake_upstream.base_url},
        ],
        prices=[
            {"model": "house-*", "input": "0.4", "output": "1.6", "cached_input": "0.1"},
            {"model": "prod-4o", "alias": "gpt-4o-mini"},
            {"model": "deepseek-v9-house", "input": "0.5", "output": "2"},
        ],
    )
    async with start_proxy(settings) as running:
        yield running


def charged(rates: dict[str, str | None], usage: FakeUsage) -> Decimal:
    """What ``usage`` costs at ``rates`` (USD per 1M tokens), cached input at its own rate."""

    def rate(name: str, tokens: int) -> Decimal:
        if tokens == 0:
            return Decimal(0)
        value = rates[name]
        assert value is not None, f"no {name} rate for {tokens} tokens"
        return tokens * Decimal(value)

    uncached = usage.prompt_tokens - usage.cached_tokens
    total = (
        rate("input", uncached)
        + rate("cached_input", usage.cached_tokens)
        + rate("output", usage.completion_tokens)
    )
    return total / 10**6


@pytest.mark.parametrize(("model", "endpoint", "usage", "origin"), CASES, ids=[c[0] for c in CASES])
async def test_the_prices_shown_are_the_prices_charged(
    routed_proxy: RunningProxy,
    fake_upstream: FakeUpstream,
    model: str,
    endpoint: str,
    usage: FakeUsage,
    origin: tuple[str, str],
) -> None:
    fake_upstream.usage = usage
    sdk = routed_proxy.sdk
    if endpoint == "embeddings":
        raw = await sdk.embeddings.with_raw_response.create(model=model, input="hello")
    else:
        raw = await sdk.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    record = await routed_proxy.record(raw.headers["x-tally-request-id"])
    shown = await routed_proxy.api.get("/usage/prices", params={"model": model})
    assert shown.status_code == 200, shown.text
    price = shown.json()
    assert (price["source"], price["priced_as"]) == origin
    assert record["price_source"] == price["source"]
    assert record["cost_usd"] is not None
    assert Decimal(record["cost_usd"]) == charged(price["usd_per_million"], usage)


async def test_a_model_without_a_price_is_unpriced_in_both(routed_proxy: RunningProxy) -> None:
    raw = await routed_proxy.sdk.chat.completions.with_raw_response.create(
        model="nobody-knows-this-model", messages=[{"role": "user", "content": "hi"}]
    )
    record = await routed_proxy.record(raw.headers["x-tally-request-id"])
    shown = await routed_proxy.api.get("/usage/prices", params={"model": "nobody-knows-this-model"})
    assert (record["cost_usd"], shown.status_code) == (None, 404)


README = Path(__file__).resolve().parents[2] / "README.md"
# The README's known gaps of the bundled prices, each as the fact it states:
# (model, provider hint, rate, USD per 1M tokens it is at, or None for no rate).
KNOWN_GAPS = [
    ("deepseek-chat", "deepseek", "input", "0.27"),
    ("deepseek-chat", "deepseek", "output", "1.1"),
    ("claude-sonnet-4-20250514", "anthropic", "input", "3"),
    ("gpt-4o-audio-preview", "openai", "input_audio", None),
    ("gpt-4o-audio-preview", "openai", "output_audio", None),
]


PEAK_HOURS = "2026-03-02T12:00:00Z"
"""A moment DeepSeek bills its standard rate (off-peak, 16:30-00:30 UTC, is half)."""


@pytest.mark.parametrize(("model", "provider", "rate", "usd"), KNOWN_GAPS)
async def test_the_readme_known_gaps_hold(
    sqlite_proxy: RunningProxy, model: str, provider: str, rate: str, usd: str | None
) -> None:
    shown = await sqlite_proxy.api.get(
        "/usage/prices", params={"model": model, "provider": provider, "at": PEAK_HOURS}
    )
    assert shown.status_code == 200, shown.text
    price = shown.json()
    assert price["version"] in README.read_text()  # the README names the data's version
    assert price["usd_per_million"][rate] == usd
    if model.startswith("claude-sonnet-4"):  # no long-context tier: no rate past a prompt size
        assert not any("once the prompt has more than" in n for n in price["notes"]), price


async def test_repricing_with_the_same_prices_changes_nothing(
    routed_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """Reprice looks prices up as the live path did: with the upstream each record names.

    Without the hint text-embedding-3-small (listed under OpenAI only) was set to null.
    """
    for model, endpoint, usage, _ in CASES:
        fake_upstream.usage = usage
        if endpoint == "embeddings":
            await routed_proxy.sdk.embeddings.create(model=model, input="hello")
        else:
            await routed_proxy.sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
    before = {r["id"]: r["cost_usd"] for r in await routed_proxy.records(len(CASES))}
    assert None not in before.values()
    engine = create_async_engine(routed_proxy.settings.database.url)
    try:
        since = datetime.now(UTC) - timedelta(hours=1)
        report = await reprice(engine, record_prices(routed_proxy.settings), since=since)
    finally:
        await engine.dispose()
    assert (report.examined, report.changed) == (len(CASES), 0)
    after = {r["id"]: r["cost_usd"] for r in await routed_proxy.records(len(CASES))}
    assert after == before
