"""Start-up: what the app prepares before it reports ready, so that requests do not wait."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream


async def test_the_default_tokenizer_is_loaded_before_the_first_request(
    fake_upstream: FakeUpstream, tmp_path: Path, tokenizer_loads: list[str]
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        metering__drift_sample_rate=1,
    )
    async with start_proxy(settings) as proxy:
        assert tokenizer_loads == ["o200k_base"]
        await proxy.sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
        (record,) = await proxy.records(1)
    assert record["estimated_prompt_tokens"] is not None
    assert tokenizer_loads == ["o200k_base"]  # the sampled request found it loaded


async def test_by_default_no_tokenizer_is_loaded_until_one_is_needed(
    fake_upstream: FakeUpstream, tmp_path: Path, tokenizer_loads: list[str]
) -> None:
    # Drift sampling is off unless configured: no vocabulary (~43 MB) for providers that
    # report usage.
    settings = proxy_settings(fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/t.db")
    assert settings.metering.drift_sample_rate == 0
    chat = [{"role": "user", "content": "Hi"}]
    async with start_proxy(settings) as proxy:
        await proxy.sdk.chat.completions.create(model="gpt-4o-mini", messages=chat)  # type: ignore[arg-type]
        await proxy.records(1)
        assert tokenizer_loads == []  # the provider's usage was enough
        await proxy.sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=chat,  # type: ignore[arg-type]
            extra_headers={"X-Fake-Scenario": "no-usage"},
        )
        records = await proxy.records(2)
    assert records[0]["usage_source"] == "estimated"
    assert tokenizer_loads == ["o200k_base"]
