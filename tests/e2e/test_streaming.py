"""Streams through the proxy: passed on unchanged, metered on the side, hang-ups recorded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from proxy.tokens import TokenCounter
from tests.e2e.conftest import RunningProxy
from tests.support.fake_upstream import FakeUpstream

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a story."}
]
STREAM_BODY = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}


async def _events(base_url: str, body: dict[str, Any], scenario: str = "") -> list[Any]:
    """The data of every SSE event, ids and timestamps blanked (they differ per request)."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        headers = {"x-fake-scenario": scenario} if scenario else {}
        response = await client.post("/chat/completions", json=body, headers=headers)
        assert response.status_code == 200
    events: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block or block.startswith(": tally "):  # the proxy's comment, ignored by SSE
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        if data == "[DONE]":
            events.append(data)
            continue
        event = json.loads(data)
        event["id"], event["created"] = "-", 0
        events.append(event)
    return events


async def test_client_sees_exactly_the_stream_it_asked_for(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    direct = await _events(fake_upstream.base_url, STREAM_BODY)
    proxied = await _events(proxy.base_url, STREAM_BODY)
    assert proxied == direct
    assert all("usage" not in event for event in proxied if event != "[DONE]")
    sent = fake_upstream.requests[-1].json()
    assert sent["stream_options"] == {"include_usage": True}

    (record,) = await proxy.records(1)
    assert record["stream"] is True
    assert record["usage_source"] == "provider"
    assert record["total_tokens"] == fake_upstream.usage.total_tokens
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["latency_ms"]


async def test_client_that_asked_for_usage_keeps_the_usage_chunk(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    stream = await sqlite_proxy.sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == fake_upstream.usage.total_tokens
    (record,) = await sqlite_proxy.records(1)
    assert record["usage_source"] == "provider"


@pytest.mark.parametrize("scenario", ["litellm-usage", "spaced-json"])
async def test_injected_usage_is_removed_however_the_upstream_writes_it(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream, scenario: str
) -> None:
    """LiteLLM's proxy sends the usage chunk with one empty choice; servers writing JSON with
    Python's json module put ``"usage": null`` (spaced) on every chunk. A client that did not
    ask for usage gets neither."""
    fake_upstream.scenario = scenario
    stream = await sqlite_proxy.sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert fake_upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == fake_upstream.reply
    # Event for event the stream the upstream sends a client that does not ask for usage.
    direct = await _events(fake_upstream.base_url, STREAM_BODY, scenario)
    proxied = await _events(sqlite_proxy.base_url, STREAM_BODY, scenario)
    assert proxied == direct
    records = await sqlite_proxy.records(2)
    assert {r["usage_source"] for r in records} == {"provider"}
    assert {r["total_tokens"] for r in records} == {fake_upstream.usage.total_tokens}


async def test_stream_without_provider_usage_is_estimated(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "no-usage"
    stream = await sqlite_proxy.sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == fake_upstream.reply
    (record,) = await sqlite_proxy.records(1)
    counter = TokenCounter()
    assert record["usage_source"] == "estimated"
    assert record["completion_tokens"] == counter.completion_tokens("gpt-4o-mini", text)
    assert record["prompt_tokens"] == counter.prompt_tokens(
        "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}
    )


async def test_streamed_tool_call_arguments_are_counted(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "no-usage,tool-calls"
    tools: list[openai.types.chat.ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
            },
        }
    ]
    stream = await sqlite_proxy.sdk.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, tools=tools, stream=True
    )
    arguments = ""
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += (call.function.arguments or "") if call.function else ""
    assert json.loads(arguments) == json.loads(fake_upstream.tool_arguments)
    (record,) = await sqlite_proxy.records(1)
    assert record["usage_source"] == "estimated"
    assert record["completion_tokens"] >= TokenCounter().count_text("gpt-4o", arguments)


async def test_client_hang_up_mid_stream_records_partial_usage(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "slow,chunks=40"
    fake_upstream.delay_ms = 30
    stream = await proxy.sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"X-Session-Id": "gone"}
    )
    received = []
    async for chunk in stream:
        received.append(chunk)
        if len(received) == 5:
            break
    await stream.close()
    # Closing the upstream connection is what stops the provider generating (and billing).
    fake_upstream.wait_for_disconnects(1)
    (record,) = await proxy.records(1)
    assert record["usage_source"] == "partial"
    assert record["error"] == "client disconnected"
    assert 0 < record["completion_tokens"] < 40
    assert record["prompt_tokens"] > 0
    session = (await proxy.api.get("/usage/sessions/gone")).json()
    assert session["total_tokens"] == record["total_tokens"]


async def test_upstream_cut_mid_stream_ends_the_stream_and_is_recorded(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "cut"
    async with httpx.AsyncClient(base_url=sqlite_proxy.base_url) as client:
        response = await client.post("/chat/completions", json=STREAM_BODY)
    assert response.status_code == 200
    assert "[DONE]" not in response.text
    (record,) = await sqlite_proxy.records(1)
    assert record["error"].startswith("upstream stream broken")
    assert record["usage_source"] == "partial"


async def test_stalled_upstream_and_impatient_client(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "stall"
    sdk = sqlite_proxy.sdk.with_options(timeout=httpx.Timeout(5.0, read=0.5))
    with pytest.raises(openai.APITimeoutError):
        stream = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
    (record,) = await sqlite_proxy.records(1)
    assert record["usage_source"] == "partial"
    assert record["error"] == "client disconnected"


async def test_responses_api_stream_usage(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    stream = await sqlite_proxy.sdk.responses.create(model="gpt-4.1", input="Hi", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "response.completed"
    (record,) = await sqlite_proxy.records(1)
    assert (record["usage_source"], record["total_tokens"]) == (
        "provider",
        fake_upstream.usage.total_tokens,
    )
    assert "stream_options" not in fake_upstream.requests[-1].json()


async def test_concurrent_streams_are_each_recorded(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async def one(index: int) -> str:
        stream = await sqlite_proxy.sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"X-Session-Id": f"s{index % 4}"},
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    texts = await asyncio.gather(*(one(i) for i in range(40)))
    assert set(texts) == {fake_upstream.reply}
    records = await sqlite_proxy.records(40)
    assert {r["usage_source"] for r in records} == {"provider"}
    sessions = (await sqlite_proxy.api.get("/usage/sessions")).json()["data"]
    assert sum(s["requests"] for s in sessions) == 40
