"""Drift: the local estimate beside the provider's count, on sampled requests."""

from __future__ import annotations

from pathlib import Path

from proxy.tokens import TokenCounter
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MESSAGES = [{"role": "user", "content": "How far is the moon?"}]
BODY = {"model": "gpt-4o-mini", "messages": MESSAGES}


async def test_sampled_requests_report_drift_per_model(
    fake_upstream: FakeUpstream, database_url: str
) -> None:
    counter = TokenCounter()
    estimated_prompt = counter.prompt_tokens("/v1/chat/completions", BODY)
    estimated_completion = counter.completion_tokens("gpt-4o-mini", fake_upstream.reply)
    assert estimated_prompt is not None
    # The provider claims 10% more prompt tokens than the local count, and hides 5 reasoning
    # tokens in the completion, which drift does not count against the estimate.
    provider_prompt = round(estimated_prompt * 1.1)
    fake_upstream.usage = FakeUsage(
        prompt_tokens=provider_prompt,
        completion_tokens=estimated_completion + 5,
        reasoning_tokens=5,
    )
    settings = proxy_settings(fake_upstream.base_url, database_url, metering__drift_sample_rate=1)
    async with start_proxy(settings) as proxy:
        for stream in (False, True, False):
            await proxy.sdk.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=stream
            )
        records = await proxy.records(3)
        drift = (await proxy.api.get("/usage/drift")).json()
    assert {r["usage_source"] for r in records} == {"provider"}
    assert {r["estimated_prompt_tokens"] for r in records} == {estimated_prompt}
    assert {r["estimated_completion_tokens"] for r in records} == {estimated_completion}
    assert drift["sample_rate"] == 1
    (row,) = drift["data"]
    assert (row["model"], row["samples"]) == ("gpt-4o-mini", 3)
    assert row["prompt"]["provider_tokens"] == 3 * provider_prompt
    assert row["prompt"]["estimated_tokens"] == 3 * estimated_prompt
    expected = round(100 * (estimated_prompt - provider_prompt) / provider_prompt, 2)
    assert row["prompt"]["drift_pct"] == expected < 0
    assert row["completion"]["drift_pct"] == 0
    assert row["completion"]["mean_abs_error_pct"] == 0


async def test_unsampled_requests_keep_no_estimate(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/d.db",
        metering__drift_sample_rate=0,
    )
    async with start_proxy(settings) as proxy:
        await proxy.sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        (record,) = await proxy.records(1)
        drift = (await proxy.api.get("/usage/drift")).json()
    assert record["estimated_prompt_tokens"] is None
    assert drift["data"] == []


async def test_estimate_says_what_it_left_out(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fake_upstream.scenario = "no-usage"
    settings = proxy_settings(fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/i.db")
    async with start_proxy(settings) as proxy:
        await proxy.sdk.chat.completions.create(
            model="gpt-4o",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        )
        (record,) = await proxy.records(1)
    assert record["usage_source"] == "estimated"
    assert record["estimate_excludes"] == "image"
    assert record["estimated_prompt_tokens"] is None
