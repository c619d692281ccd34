"""Several upstreams behind one proxy: routed by model, each with its own credentials."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from tests.e2e.conftest import proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage


@pytest.fixture
def second_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply="From the second provider.") as fake:
        yield fake


async def test_models_route_to_their_upstreams(
    fake_upstream: FakeUpstream, second_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/r.db",
        upstreams=[
            {
                "name": "anthropic",
                "kind": "anthropic",
                "url": second_upstream.base_url,
                "models": ["claude-*"],
                "api_key": "sk-ant-proxy",
            },
            {
                "name": "azure",
                "kind": "azure",
                "url": second_upstream.url,
                "api_version": "2024-10-21",
                "deployments": {"gpt-4o": "prod-4o"},
                "models": ["gpt-4o"],
                "api_key": "azure-key",
                "headers": {"X-Team": "search"},
            },
            {"name": "openai", "kind": "openai", "url": fake_upstream.base_url},
        ],
        access__allow_anonymous=True,  # the clients' own keys are replaced by the proxy's
    )
    second_upstream.usage = FakeUsage(prompt_tokens=100, completion_tokens=50, cached_tokens=40)
    async with start_proxy(settings) as proxy:
        mini = await proxy.sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
        assert mini.choices[0].message.content == fake_upstream.reply
        assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-test-client"

        azure = await proxy.sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]
        )
        assert azure.choices[0].message.content == second_upstream.reply
        sent = second_upstream.requests[-1]
        assert sent.path == "/openai/deployments/prod-4o/chat/completions"
        assert sent.query == "api-version=2024-10-21"
        assert sent.headers["api-key"] == "azure-key"
        assert sent.headers["x-team"] == "search"
        assert "authorization" not in sent.headers

        async with anthropic.AsyncAnthropic(
            base_url=proxy.url, api_key="sk-ant-client", max_retries=0
        ) as claude:
            message = await claude.messages.create(
                model="claude-haiku-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "Hi"}],
                extra_headers={"X-Session-Id": "claude"},
            )
        assert message.content[0].type == "text"
        sent = second_upstream.requests[-1]
        assert sent.path == "/v1/messages"
        assert sent.headers["x-api-key"] == "sk-ant-proxy"
        assert "stream_options" not in sent.json()

        records = {r["model"]: r for r in await proxy.records(3)}
    assert records["gpt-4o-mini"]["upstream"] == fake_upstream.base_url
    assert records["gpt-4o"]["upstream"] == second_upstream.url
    claude_record = records["claude-haiku-4-5"]
    assert claude_record["upstream"] == second_upstream.base_url
    # Anthropic reports input excluding cache reads; the record's prompt is the sum.
    assert (claude_record["prompt_tokens"], claude_record["cached_tokens"]) == (100, 40)
    assert claude_record["usage_source"] == "provider"
    assert claude_record["session_id"] == "claude"
    assert claude_record["cost_usd"] is not None and Decimal(claude_record["cost_usd"]) > 0


async def test_anthropic_stream_through_the_proxy(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/a.db",
        upstreams=[{"kind": "anthropic", "url": fake_upstream.base_url}],
    )
    fake_upstream.usage = FakeUsage(
        prompt_tokens=300, completion_tokens=20, cache_creation_tokens=100
    )
    async with (
        start_proxy(settings) as proxy,
        anthropic.AsyncAnthropic(base_url=proxy.url, api_key="sk-ant", max_retries=0) as claude,
        claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        (record,) = await proxy.records(1)
    assert text == fake_upstream.reply
    assert record["stream"] is True and record["usage_source"] == "provider"
    assert (record["prompt_tokens"], record["cache_creation_tokens"]) == (300, 100)
    assert record["completion_tokens"] == 20


async def test_model_without_an_upstream_is_refused(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/n.db",
        upstreams=[{"url": fake_upstream.base_url, "models": ["gpt-*"]}],
    )
    async with start_proxy(settings) as proxy:
        response = await proxy.api.post(
            "/v1/chat/completions", json={"model": "llama-3", "messages": []}
        )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert fake_upstream.requests == []
