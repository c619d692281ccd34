"""Gemini's native API through a running proxy, with the google-genai SDK as the client.

The upstream is the fake provider speaking Gemini: ``generateContent``, streams as events
(``alt=sse``, what the SDK asks for) or as one growing JSON array, ``countTokens``; usage as
``usageMetadata`` (thoughts apart from candidates), or none.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from tests.access.conftest import ADMIN, ADMIN_TOKEN, issue_key
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MODEL = "gemini-2.5-flash"
PROXY_KEY = "AIza-proxy-own-key"
# gemini-2.5-flash in genai-prices (Google): $0.30 input, $0.03 cached input, $2.50 output
# (thoughts included) per million tokens.
USAGE = FakeUsage(
    prompt_tokens=1000, completion_tokens=300, cached_tokens=400, reasoning_tokens=200
)
COST = (Decimal(600) * Decimal("0.30") + 400 * Decimal("0.03") + 300 * Decimal("2.50")) / 10**6


def _gemini_route(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": "gemini", "kind": "gemini", "url": fake.url, "models": ["gemini-*"], **extra}


@pytest.fixture
async def proxy(fake_upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[RunningProxy]:
    """Gemini natively, the Gemini OpenAI-compatible endpoint, and OpenAI for the rest."""
    fake_upstream.usage = USAGE
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/g.db",
        upstreams=[
            _gemini_route(fake_upstream),
            {
                "name": "gemini-openai",
                "url": f"{fake_upstream.url}/v1beta/openai",
                "models": ["gemini-*"],
                "provider": "google",
            },
            {"name": "openai", "url": fake_upstream.base_url},
        ],
    )
    async with start_proxy(settings) as running:
        yield running


def _client(
    proxy: RunningProxy,
    key: str = "AIza-client-key",
    *,
    aiohttp: bool = False,
    version: str | None = None,
    **headers: str,
) -> genai.Client:
    """The SDK pointed at the proxy; its async side on httpx, or on aiohttp (its default
    when aiohttp is installed, and another line reader for streams). With a base URL of its
    own the SDK calls ``/v1/models/...``, unless given an API version (``v1beta``)."""
    transport = {} if aiohttp else {"transport": httpx.AsyncHTTPTransport()}
    options = types.HttpOptions(
        base_url=proxy.url,
        api_version=version,
        headers=headers,
        retry_options=types.HttpRetryOptions(attempts=1),
        async_client_args=transport,
    )
    return genai.Client(api_key=key, http_options=options)


async def test_generate_content_is_routed_by_the_model_in_the_path_and_priced(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with _client(proxy, version="v1beta", **{"X-Session-Id": "gem-1"}).aio as client:
        answer = await client.models.generate_content(model=MODEL, contents="Hi")
    assert answer.text == fake_upstream.reply
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.thoughts_token_count == 200
    (sent,) = fake_upstream.requests
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == "AIza-client-key"  # pass-through
    assert "x-session-id" not in sent.headers
    (record,) = await proxy.records(1)
    assert record["endpoint"] == f"/v1beta/models/{MODEL}:generateContent"
    assert (record["model"], record["response_model"]) == (MODEL, MODEL)
    assert record["upstream"] == fake_upstream.url
    assert record["usage_source"] == "provider" and record["stream"] is False
    # Thoughts are output: 100 candidates + 200 thoughts.
    assert (record["prompt_tokens"], record["completion_tokens"]) == (1000, 300)
    assert (record["cached_tokens"], record["reasoning_tokens"]) == (400, 200)
    assert Decimal(record["cost_usd"]) == COST
    assert record["session_id"] == "gem-1"


# google-genai subclasses aiohttp's ClientSession, which aiohttp warns about.
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
@pytest.mark.parametrize("aiohttp", [False, True], ids=["httpx", "aiohttp"])
async def test_a_stream_reaches_the_sdk_unchanged_and_is_metered(
    proxy: RunningProxy, fake_upstream: FakeUpstream, aiohttp: bool
) -> None:
    async with _client(proxy, aiohttp=aiohttp).aio as client:
        chunks = [
            chunk
            async for chunk in await client.models.generate_content_stream(
                model=MODEL, contents="Hi"
            )
        ]
    assert "".join(chunk.text or "" for chunk in chunks) == fake_upstream.reply
    assert len(chunks) == len(fake_upstream.reply.split(" "))
    (sent,) = fake_upstream.requests
    assert (sent.path, sent.query) == (f"/v1/models/{MODEL}:streamGenerateContent", "alt=sse")
    assert b"stream_options" not in sent.body
    (record,) = await proxy.records(1)
    assert record["stream"] is True and record["usage_source"] == "provider"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (1000, 300)
    assert record["reasoning_tokens"] == 200 and record["ttft_ms"] is not None
    assert Decimal(record["cost_usd"]) == COST


async def test_a_json_array_stream_passes_byte_for_byte(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """Without alt=sse the answer is one JSON array; it is streamed, not buffered."""
    url = f"/v1beta/models/{MODEL}:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    # Slow, so that each element leaves the fake in its own packet.
    headers = {"x-goog-api-key": "k", "X-Fake-Scenario": "slow", "X-Fake-Delay-Ms": "20"}
    async with (
        httpx.AsyncClient(base_url=fake_upstream.url) as direct,
        direct.stream("POST", url, json=body, headers=headers) as answer,
    ):
        expected = b"".join([part async for part in answer.aiter_raw()])
    async with proxy.api.stream("POST", url, json=body, headers=headers) as got:
        assert got.headers["content-type"].startswith("application/json")
        received = [part async for part in got.aiter_raw()]
    assert _without_ids(b"".join(received)) == _without_ids(expected)
    # Element by element (then the closing bracket), as the upstream sent them.
    assert len(received) == len(fake_upstream.reply.split(" ")) + 1
    assert expected.startswith(b"[{") and b"\r\n,\r\n" in expected
    record = await proxy.record(got.headers["x-tally-request-id"])
    assert record["stream"] is True and record["usage_source"] == "provider"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (1000, 300)


def _without_ids(answer: bytes) -> bytes:
    return re.sub(rb'"responseId": "[^"]*"', b"", answer)


async def test_count_tokens_passes_through_unbilled(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with _client(proxy).aio as client:
        counted = await client.models.count_tokens(model=MODEL, contents="Hi")
    assert counted.total_tokens == 1000
    assert fake_upstream.requests[0].path == f"/v1/models/{MODEL}:countTokens"
    (record,) = await proxy.records(1)
    assert record["endpoint"].endswith(":countTokens")
    assert record["prompt_tokens"] is None and Decimal(record["cost_usd"]) == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_without_usage_is_estimated(
    proxy: RunningProxy, fake_upstream: FakeUpstream, stream: bool
) -> None:
    async with _client(proxy, **{"X-Fake-Scenario": "no-usage"}).aio as client:
        if stream:
            pieces = client.models.generate_content_stream(model=MODEL, contents="Hello there")
            text = "".join([chunk.text or "" async for chunk in await pieces])
        else:
            answer = await client.models.generate_content(model=MODEL, contents="Hello there")
            text = answer.text or ""
    assert text == fake_upstream.reply
    (record,) = await proxy.records(1)
    assert record["usage_source"] == "estimated"
    assert record["prompt_tokens"] == 2  # "Hello there", with the stand-in vocabulary
    assert record["completion_tokens"] == 9  # the reply's tokens
    assert record["cost_usd"] is not None


async def test_a_key_in_the_query_is_moved_to_the_header_and_never_kept(
    proxy: RunningProxy, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("proxy", "tallyproxy", "uvicorn"):  # the proxy's own logs, not the test's
        caplog.set_level(logging.DEBUG, logger=name)
    secret = "AIzaSyQuerySecret0123456789"
    body = {"contents": [{"parts": [{"text": "Hi"}]}]}
    answer = await proxy.api.post(
        f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse&key={secret}", json=body
    )
    assert answer.status_code == 200
    (sent,) = fake_upstream.requests
    assert sent.query == "alt=sse"
    assert sent.headers["x-goog-api-key"] == secret
    record = await proxy.record(answer.headers["x-tally-request-id"])
    everything = str(await proxy.api.get("/usage/requests")) + str(record) + caplog.text
    assert secret not in everything
    assert "streamGenerateContent" in caplog.text  # the access line was captured


async def test_upstream_errors_reach_the_sdk_as_googles_errors(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with _client(proxy, **{"X-Fake-Scenario": "error-429"}).aio as client:
        with pytest.raises(errors.ClientError) as raised:
            await client.models.generate_content(model=MODEL, contents="Hi")
    assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
    (record,) = await proxy.records(1)
    assert record["status_code"] == 429 and "quota" in record["error"]
    assert Decimal(record["cost_usd"]) == 0


async def test_the_proxys_own_errors_are_in_googles_shape(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with _client(proxy).aio as client:
        with pytest.raises(errors.ClientError) as raised:
            await client.models.generate_content(model="claude-haiku-4-5", contents="Hi")
    async with _client(proxy, **{"X-Session-Id": "x" * 300}).aio as client:
        with pytest.raises(errors.ClientError) as bad_body:
            await client.models.generate_content(model=MODEL, contents="Hi")
    # claude-* routes to no gemini upstream (the OpenAI catch-all does not speak Gemini).
    assert (raised.value.code, raised.value.status) == (404, "NOT_FOUND")
    assert "claude-haiku-4-5" in (raised.value.message or "")
    assert (bad_body.value.code, bad_body.value.status) == (400, "INVALID_ARGUMENT")
    assert "x-session-id" in (bad_body.value.message or "")
    assert fake_upstream.requests == []


async def test_a_virtual_key_as_the_gemini_api_key(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake_upstream.usage = USAGE
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/k.db",
        upstreams=[_gemini_route(fake_upstream, api_key=PROXY_KEY)],
        admin_token=ADMIN_TOKEN,
    )
    async with start_proxy(settings) as proxy:
        proxy.api.headers.update(ADMIN)
        issued = await issue_key(proxy.api, name="gemini-app", models=["gemini-2.5-*"])
        async with _client(proxy, key=issued["key"]).aio as client:
            await client.models.generate_content(model=MODEL, contents="Hi")
            with pytest.raises(errors.ClientError) as other_model:
                await client.models.generate_content(model="gemini-3-pro-preview", contents="Hi")
        async with _client(proxy, key="AIza-not-a-virtual-key").aio as client:
            with pytest.raises(errors.ClientError) as anonymous:
                await client.models.generate_content(model=MODEL, contents="Hi")
        async with httpx.AsyncClient(base_url=proxy.url) as plain:
            in_query = await plain.post(
                f"/v1beta/models/{MODEL}:generateContent?key={issued['key']}",
                json={"contents": [{"parts": [{"text": "Hi"}]}]},
            )
    assert in_query.status_code == 200, in_query.text
    sent = fake_upstream.requests
    assert len(sent) == 2
    assert all(r.headers["x-goog-api-key"] == PROXY_KEY for r in sent)
    assert all(issued["key"] not in r.query + str(r.headers.items()) for r in sent)
    assert (other_model.value.code, other_model.value.status) == (403, "PERMISSION_DENIED")
    assert (anonymous.value.code, anonymous.value.status) == (401, "UNAUTHENTICATED")


async def test_the_openai_compatible_endpoint_is_priced_as_gemini(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """The openai SDK, to a Gemini model: routed to the OpenAI-compatible Gemini upstream
    (not the native one), priced from Google's list."""
    fake_upstream.usage = FakeUsage(prompt_tokens=1000, completion_tokens=300)
    async with openai.AsyncOpenAI(
        base_url=proxy.base_url, api_key="AIza-client-key", max_retries=0
    ) as sdk:
        answer = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert answer.choices[0].message.content == fake_upstream.reply
    (sent,) = fake_upstream.requests
    assert sent.path == "/v1beta/openai/chat/completions"
    assert sent.headers["authorization"] == "Bearer AIza-client-key"
    (record,) = await proxy.records(1)
    expected = (Decimal(1000) * Decimal("0.30") + 300 * Decimal("2.50")) / 10**6
    assert Decimal(record["cost_usd"]) == expected
    prices = (await proxy.api.get("/usage/prices", params={"model": MODEL})).json()
    assert prices["provider"] == "google"
