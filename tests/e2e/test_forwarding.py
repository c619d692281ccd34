"""The openai SDK through a running proxy to the fake provider: JSON answers and records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from proxy.tokens import TokenCounter
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello."},
]


async def test_chat_completion_is_forwarded_and_metered(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = FakeUsage(
        prompt_tokens=1200, completion_tokens=300, cached_tokens=1024, reasoning_tokens=128
    )
    raw = await proxy.sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={
            "X-Session-Id": "session-1",
            "X-User-Id": "alice",
            "X-Property-Env": "prod",
            "Helicone-Property-Feature": "greeting",
        },
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == fake_upstream.reply
    assert completion.usage is not None and completion.usage.total_tokens == 1500
    record_id = raw.headers["x-tally-request-id"]
    assert raw.headers["x-tally-total-tokens"] == "1500"

    record = await proxy.record(record_id)
    assert record["endpoint"] == "/v1/chat/completions"
    assert record["method"] == "POST"
    assert (record["status_code"], record["stream"], record["error"]) == (200, False, None)
    assert record["model"] == "gpt-4o-mini"
    assert record["usage_source"] == "provider"
    tokens = {k: record[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert tokens == {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
    assert (record["cached_tokens"], record["reasoning_tokens"]) == (1024, 128)
    assert (record["session_id"], record["user_id"]) == ("session-1", "alice")
    assert record["properties"] == {"env": "prod", "feature": "greeting"}
    # gpt-4o-mini: $0.15/1M input, $0.075/1M cached input, $0.60/1M output (reasoning included).
    assert record["cost_usd"] == "0.0002832"  # (176 * 0.15 + 1024 * 0.075 + 300 * 0.60) / 1e6
    assert record["latency_ms"] > 0

    forwarded = fake_upstream.requests[-1]
    sent_headers = {name.lower() for name in forwarded.headers}
    assert not sent_headers & {"x-session-id", "x-user-id", "x-property-env"}
    assert "helicone-property-feature" not in sent_headers
    assert forwarded.headers["authorization"] == "Bearer sk-test-client"

    session = (await proxy.api.get("/usage/sessions/session-1")).json()
    assert (session["requests"], session["total_tokens"], session["user_id"]) == (1, 1500, "alice")


async def test_session_totals_add_up_across_requests(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    for prompt in (100, 200, 300):
        await proxy.sdk.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            extra_headers={"X-Session-Id": "many", "X-Fake-Usage": f"prompt_tokens={prompt}"},
        )
    await proxy.records(3)
    session = (await proxy.api.get("/usage/sessions/many")).json()
    assert session["requests"] == 3
    assert session["prompt_tokens"] == 600
    assert session["total_tokens"] == 600 + 3 * fake_upstream.usage.completion_tokens
    assert session["models"]["gpt-4o"]["requests"] == 3


async def test_body_user_field_is_the_user_fallback(proxy: RunningProxy) -> None:
    await proxy.sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, user="bob")
    (record,) = await proxy.records(1)
    assert record["user_id"] == "bob"


async def test_missing_usage_is_estimated_with_the_model_tokenizer(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "no-usage"
    raw = await sqlite_proxy.sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.parse().usage is None
    assert "x-tally-total-tokens" not in raw.headers
    record = await sqlite_proxy.record(raw.headers["x-tally-request-id"])
    counter = TokenCounter()
    prompt = counter.prompt_tokens(
        "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}
    )
    completion = counter.completion_tokens("gpt-4o-mini", fake_upstream.reply)
    assert record["usage_source"] == "estimated"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion)
    assert record["total_tokens"] == prompt + completion
    # OpenAI's chat format: 3 tokens per message, its role and content, 3 to prime the reply.
    pieces = ["system", "You are terse.", "user", "Say hello."]
    assert prompt == 2 * 3 + sum(counter.count_text("gpt-4o-mini", p) for p in pieces) + 3


async def test_embeddings_responses_and_completions(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    sdk = sqlite_proxy.sdk
    embedded = await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(embedded.data) == 2
    response = await sdk.responses.create(model="gpt-4.1", input="Say hello.")
    assert response.output_text == fake_upstream.reply
    legacy = await sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello.")
    assert legacy.choices[0].text
    records = {r["endpoint"]: r for r in await sqlite_proxy.records(3)}
    usage = fake_upstream.usage
    assert records["/v1/embeddings"]["prompt_tokens"] == usage.prompt_tokens
    assert records["/v1/embeddings"]["completion_tokens"] == 0
    assert records["/v1/responses"]["total_tokens"] == usage.total_tokens
    assert records["/v1/completions"]["total_tokens"] == usage.total_tokens
    assert {r["usage_source"] for r in records.values()} == {"provider"}


async def test_a_total_smaller_than_its_parts_is_recorded_as_their_sum(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """LiteLLM's mock embeddings answer ``total_tokens: 0`` beside counted prompt tokens."""
    fake_upstream.usage = FakeUsage(prompt_tokens=5, reported_total=0)
    raw = await sqlite_proxy.sdk.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="a"
    )
    assert raw.parse().usage.total_tokens == 0  # the client gets the provider's answer
    assert raw.headers["x-tally-total-tokens"] == "5"
    fake_upstream.usage = FakeUsage(prompt_tokens=5)
    await sqlite_proxy.sdk.embeddings.create(model="text-embedding-3-small", input="a")
    repaired, agreed = sorted(await sqlite_proxy.records(2), key=lambda r: r["id"])
    assert (repaired["prompt_tokens"], repaired["total_tokens"]) == (5, 5)
    assert repaired["usage_repaired"] is True and repaired["usage_source"] == "provider"
    assert agreed["total_tokens"] == 5 and agreed["usage_repaired"] is False


async def test_models_list_and_unknown_paths_pass_through(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    models = await sqlite_proxy.sdk.models.list()
    assert [m.id async for m in models]
    async with httpx.AsyncClient(base_url=sqlite_proxy.base_url) as client:
        missing = await client.post("/no/such/thing?x=1", json={"a": 1})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.headers["x-tally-request-id"]
    assert fake_upstream.requests[-1].path == "/v1/no/such/thing"
    assert fake_upstream.requests[-1].query == "x=1"
    records = await sqlite_proxy.records(2)
    assert {(r["method"], r["status_code"], r["usage_source"]) for r in records} == {
        ("GET", 200, None),
        ("POST", 404, None),
    }


async def test_gzip_answers_reach_the_client_readable(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "gzip"
    completion = await sqlite_proxy.sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content == fake_upstream.reply
    (record,) = await sqlite_proxy.records(1)
    assert record["total_tokens"] == fake_upstream.usage.total_tokens


async def test_configured_upstream_key_replaces_the_client_key(
    fake_upstream: FakeUpstream, tmp_path: object
) -> None:
    from tests.e2e.conftest import proxy_settings, start_proxy

    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/k.db",
        upstream__api_key="sk-real",
        access__allow_anonymous=True,  # clients without a virtual key use the proxy's key
    )
    async with start_proxy(settings) as running:
        await running.sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-real"
        (record,) = await running.records(1)
        assert "sk-" not in str(record)


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"X-Session-Id": "x" * 300}, "x-session-id"),
        ({"X-User-Id": "u" * 257}, "x-user-id"),
        ({"Helicone-Session-Id": ""}, "helicone-session-id"),
    ],
)
async def test_invalid_tags_get_openai_shaped_400(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream, headers: dict[str, str], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sqlite_proxy.sdk.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers=headers
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert fake_upstream.requests == []


async def test_invalid_json_body_gets_openai_shaped_400(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(base_url=sqlite_proxy.base_url) as client:
        response = await client.post(
            "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert "could not parse the JSON body" in response.json()["error"]["message"]
    assert fake_upstream.requests == []


async def test_upstream_cookies_are_not_kept_for_other_clients(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """One pooled client serves everybody: a cookie an upstream sets for one client's answer
    reaches that client, and never rides along on anybody's next request."""
    # By name: cookie jars ignore cookies from IP addresses, which would hide a leak.
    upstream = fake_upstream.base_url.replace("127.0.0.1", "localhost")
    settings = proxy_settings(upstream, f"sqlite+aiosqlite:///{tmp_path}/t.db")
    async with start_proxy(settings) as proxy:
        raw = await proxy.sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        assert raw.headers["set-cookie"].startswith("__cf_bm=")
        async with openai.AsyncOpenAI(api_key="sk-other", base_url=proxy.base_url) as other:
            await other.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-other"
    assert "cookie" not in fake_upstream.requests[-1].headers


async def test_no_client_default_headers_are_added_upstream(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """The upstream sees the client's headers: none invented for the ones it left out."""
    host, port = sqlite_proxy.url.removeprefix("http://").split(":")
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}'
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    sent = {name.lower() for name in fake_upstream.requests[-1].headers}
    assert not sent & {"user-agent", "accept", "content-type"}  # accept-encoding: the plan's
