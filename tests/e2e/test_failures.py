"""Upstream failures and access control, seen through the real SDK."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("scenario", "exception", "status"),
    [
        ("error-401", openai.AuthenticationError, 401),
        ("error-429", openai.RateLimitError, 429),
        ("error-500", openai.InternalServerError, 500),
    ],
)
async def test_provider_errors_pass_through_unchanged_and_are_recorded(
    sqlite_proxy: RunningProxy,
    fake_upstream: FakeUpstream,
    scenario: str,
    exception: type[openai.APIStatusError],
    status: int,
) -> None:
    fake_upstream.scenario = scenario
    with pytest.raises(exception) as caught:
        await sqlite_proxy.sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == status
    (record,) = await sqlite_proxy.records(1)
    assert record["status_code"] == status
    assert record["error"].startswith(f"upstream {status}")
    assert record["usage_source"] is None and record["total_tokens"] is None


async def test_unreachable_upstream_gives_502_in_openai_shape(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with start_proxy(proxy_settings(dead, f"sqlite+aiosqlite:///{tmp_path}/d.db")) as proxy:
        with pytest.raises(openai.APIStatusError) as caught:
            await proxy.sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 502
        body = caught.value.body
        assert isinstance(body, dict) and body["code"] == "upstream_unreachable"
        (record,) = await proxy.records(1)
        assert (record["status_code"], record["model"]) == (502, "gpt-4o")
        assert "cannot connect" in record["error"]


async def test_silent_upstream_gives_504(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fake_upstream.scenario = "stall"
    settings = proxy_settings(
        fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/t.db", upstream__read_timeout=0.3
    )
    async with start_proxy(settings) as proxy:
        with pytest.raises(openai.APIStatusError) as caught:
            await proxy.sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 504
        (record,) = await proxy.records(1)
        assert record["status_code"] == 504


async def test_malformed_upstream_json_is_passed_on_and_recorded(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "malformed"
    async with httpx.AsyncClient(base_url=sqlite_proxy.base_url) as client:
        response = await client.post("/chat/completions", json={"model": "gpt-4o", "messages": []})
    assert response.status_code == 200
    (record,) = await sqlite_proxy.records(1)
    assert record["status_code"] == 200
    assert record["usage_source"] in (None, "estimated")


async def test_usage_api_needs_the_admin_token_once_configured(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/a.db", admin_token="s3cret"
    )
    async with start_proxy(settings) as proxy:
        await proxy.sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            denied = await proxy.api.get("/usage/requests", headers=headers)
            assert denied.status_code == 401
            assert denied.json()["error"]["type"] == "authentication_error"
        assert (await proxy.api.get("/healthz")).status_code == 200
        assert (await proxy.api.get("/readyz")).status_code == 200
        proxy.api.headers["Authorization"] = "Bearer s3cret"
        (record,) = await proxy.records(1)
        assert record["status_code"] == 200


async def test_oversized_body_gets_413(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = proxy_settings(
        fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/b.db", server__max_body_bytes=4096
    )
    async with start_proxy(settings) as proxy:
        with pytest.raises(openai.APIStatusError) as caught:
            await proxy.sdk.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x" * 10_000}]
            )
        assert caught.value.status_code == 413
        assert fake_upstream.requests == []
