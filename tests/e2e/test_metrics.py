"""``/metrics`` on a running proxy: what Prometheus scrapes equals what was sent."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MESSAGES = [{"role": "user", "content": "Hi"}]
USAGE = FakeUsage(prompt_tokens=1000, cached_tokens=200, completion_tokens=500, reasoning_tokens=50)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: httpx.AsyncClient, **headers: str) -> Samples:
    response = await api.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_equal_what_was_sent(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = USAGE
    sdk = sqlite_proxy.sdk
    for _ in range(3):
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    for _ in range(2):
        stream = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        async for _chunk in stream:
            pass
    with pytest.raises(openai.InternalServerError):
        await sdk.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"X-Fake-Scenario": "error-500"}
        )
    records = await sqlite_proxy.records(6)
    samples = await scrape(sqlite_proxy.api)

    upstream = sqlite_proxy.settings.upstream.url
    mini = {"model": "gpt-4o-mini", "upstream": upstream}
    assert get(samples, "tallyproxy_requests_total", **mini, status="200") == 5
    assert (
        get(samples, "tallyproxy_requests_total", model="gpt-4o", upstream=upstream, status="500")
        == 1
    )
    for kind, per_request in (
        ("prompt", USAGE.prompt_tokens),
        ("completion", USAGE.completion_tokens),
        ("cached", USAGE.cached_tokens),
        ("reasoning", USAGE.reasoning_tokens),
    ):
        assert get(samples, "tallyproxy_tokens_total", **mini, kind=kind) == 5 * per_request
    stored_cost = sum(Decimal(r["cost_usd"]) for r in records if r["cost_usd"] is not None)
    assert stored_cost > 0
    assert get(samples, "tallyproxy_cost_usd_total", **mini) == pytest.approx(float(stored_cost))
    assert get(samples, "tallyproxy_request_duration_seconds_count", **mini) == 5
    latency_sum = sum(r["latency_ms"] for r in records if r["model"] == "gpt-4o-mini") / 1000
    assert get(samples, "tallyproxy_request_duration_seconds_sum", **mini) == pytest.approx(
        latency_sum
    )
    assert get(samples, "tallyproxy_time_to_first_token_seconds_count", **mini) == 2
    errors = {"model": "gpt-4o", "upstream": upstream, "status": "500"}
    assert get(samples, "tallyproxy_upstream_errors_total", **errors) == 1
    assert get(samples, "tallyproxy_writer_queue_depth") == 0
    assert get(samples, "tallyproxy_spool_records") == 0
    assert get(samples, "tallyproxy_records_written_total") == 6


async def test_metrics_need_the_admin_token_once_one_is_set(
    fake_upstream: FakeUpstream, tmp_path: object
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/t.db", admin_token="s3cret"
    )
    async with start_proxy(settings) as running:
        refused = await running.api.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["message"]
        samples = await scrape(running.api, authorization="Bearer s3cret")
    assert any(name == "tallyproxy_writer_queue_depth" for name, _ in samples)


async def test_two_proxies_in_one_process_count_apart(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream, tmp_path: object
) -> None:
    settings = proxy_settings(fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/other.db")
    async with start_proxy(settings) as other:
        await sqlite_proxy.sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await sqlite_proxy.records(1)
        mine, theirs = await scrape(sqlite_proxy.api), await scrape(other.api)
    count = "tallyproxy_requests_total"
    assert sum(v for (name, _), v in mine.items() if name == count) == 1
    assert sum(v for (name, _), v in theirs.items() if name == count) == 0
