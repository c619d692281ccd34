"""The test infrastructure itself: real Postgres, the fake provider with the real SDKs, runners."""

from __future__ import annotations

import asyncio
import gzip
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import asyncpg  # type: ignore[import-untyped]
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.support.fake_upstream import DEFAULT_REPLY, FakeUpstream, FakeUsage
from tests.support.postgres import PostgresServer
from tests.support.replica import REPLICATION_USER, ReplicatedDatabase
from tests.support.servers import (
    free_port,
    run_asgi_server,
    run_asgi_server_async,
    run_process_server,
)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
CLAUDE_MESSAGES: list[MessageParam] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def client(fake_upstream_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=fake_upstream_url, api_key="sk-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def claude(fake_upstream: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=fake_upstream.url, api_key="sk-ant-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def http(fake_upstream_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake_upstream_url, timeout=5) as client:
        yield client


# -- databases -------------------------------------------------------------------------------


async def test_database_url_works_with_sqlalchemy(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (7)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT x FROM t"))).scalar_one() == 7
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_url_is_a_fresh_database(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://postgres@")
    conn = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'")
        assert tables == 0
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_postgres_stop_and_start_keep_port_and_data(
    restartable_postgres: PostgresServer, postgres_url: str
) -> None:
    dsn = postgres_url.replace("+asyncpg", "")
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    await conn.close()
    port = restartable_postgres.port

    restartable_postgres.stop()
    with pytest.raises(OSError):
        await asyncpg.connect(dsn, timeout=2)
    restartable_postgres.start()

    assert restartable_postgres.port == port
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT x FROM kept") == 42
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_standby_streams_from_its_primary_pauses_and_catches_up(
    replicated_database: ReplicatedDatabase,
) -> None:
    db, servers = replicated_database, replicated_database.servers
    assert await db.fetchval("SELECT pg_is_in_recovery()", on="standby") is True
    sender = "SELECT usename || ' ' || state FROM pg_stat_replication"
    assert await db.fetchval(sender, on="primary") == f"{REPLICATION_USER} streaming"
    await db.fetchval("CREATE TABLE t AS SELECT 1 AS x", on="primary")
    servers.wait_replayed()
    assert await db.fetchval("SELECT count(*) FROM t", on="standby") == 1

    servers.pause_replay()
    await db.fetchval("INSERT INTO t VALUES (2)", on="primary")
    await asyncio.sleep(0.5)
    assert await db.fetchval("SELECT count(*) FROM t", on="standby") == 1  # received, not applied
    servers.resume_replay()
    servers.standby.stop()
    await db.fetchval("INSERT INTO t VALUES (3)", on="primary")
    servers.standby.start()  # the slot kept the WAL it missed
    servers.wait_replayed()
    assert await db.fetchval("SELECT count(*) FROM t", on="standby") == 3
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await db.fetchval("INSERT INTO t VALUES (4)", on="standby")


# -- fake upstream via the openai SDK --------------------------------------------------------


async def test_chat_completion_json(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = FakeUsage(
        prompt_tokens=120, completion_tokens=30, cached_tokens=100, reasoning_tokens=12
    )
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Session-Id": "s1"}
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.usage is not None
    assert completion.usage.total_tokens == 150
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 100
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 12

    [received] = fake_upstream.requests
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.headers["x-session-id"] == "s1"
    assert received.headers["authorization"] == "Bearer sk-test"
    assert received.json()["messages"] == MESSAGES


async def test_chat_stream_without_include_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None and len(chunk.choices) == 1 for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_stream_with_include_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Fake-Scenario": "chunks=3", "X-Fake-Usage": "completion_tokens=3"},
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1 + 3 + 1 + 1  # role, content, finish, usage
    *content, last = chunks
    assert all(chunk.usage is None for chunk in content)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (19, 3)


async def test_chat_stream_n_and_tool_calls(client: openai.AsyncOpenAI) -> None:
    tools: list[ChatCompletionToolUnionParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    ]
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        tools=tools,
        n=2,
        stream=True,
        extra_headers={"X-Fake-Scenario": "tool-calls,chunks=4"},
    )
    arguments = {0: "", 1: ""}
    finish = {}
    async for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            if call.function and call.function.name:
                assert call.function.name == "get_weather"
            arguments[choice.index] += (call.function and call.function.arguments) or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert arguments[0] == arguments[1] == '{"location": "Paris, France", "unit": "celsius"}'
    assert finish == {0: "tool_calls", 1: "tool_calls"}


async def test_no_usage_scenario_omits_usage_even_when_asked(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.scenario = "no-usage"
    completion = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.usage is None
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


async def test_legacy_completions_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="Say hello",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == DEFAULT_REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 29


async def test_embeddings_float_and_base64(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    # The SDK asks for base64 by default and decodes it.
    result = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens == result.usage.total_tokens == 19
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input="a", encoding_format="float", dimensions=4
    )
    assert floats.data[0].embedding == pytest.approx([0.001, 0.011, 0.021, 0.031])
    assert [r.json()["encoding_format"] for r in fake_upstream.requests] == ["base64", "float"]
    expected = struct.unpack("<8f", struct.pack("<8f", *(0.001 + d * 0.01 for d in range(8))))
    assert result.data[0].embedding == pytest.approx(list(expected))


async def test_responses_json_and_stream(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt-4o-mini", input="Say hello")
    assert response.output_text == DEFAULT_REPLY
    assert response.usage is not None and response.usage.input_tokens == 19

    stream = await client.responses.create(model="gpt-4o-mini", input="Say hello", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == DEFAULT_REPLY
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 10
    assert completed.response.usage.output_tokens_details.reasoning_tokens == 0


async def test_models(client: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert "gpt-4o-mini" in models


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
async def test_openai_errors(
    client: openai.AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"X-Fake-Scenario": f"error-{status}"}
        )
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and set(caught.value.body) == {
        "message",
        "type",
        "param",
        "code",
    }


# -- fake upstream via the anthropic SDK -----------------------------------------------------


async def test_anthropic_messages_json_and_stream(
    claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=50, cached_tokens=30, cache_creation_tokens=5)
    message = await claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=CLAUDE_MESSAGES,
    )
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_REPLY
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (15, 30)

    async with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=CLAUDE_MESSAGES,
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and "message_stop" in kinds
    assert final.content[0].type == "text" and final.content[0].text == DEFAULT_REPLY
    assert (final.usage.input_tokens, final.usage.output_tokens) == (15, 10)
    assert fake_upstream.requests[0].path == "/v1/messages"


async def test_anthropic_errors(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        await claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=CLAUDE_MESSAGES,
            extra_headers={"X-Fake-Scenario": "error-401"},
        )
    with pytest.raises(anthropic.RateLimitError):
        await claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=CLAUDE_MESSAGES,
            extra_headers={"X-Fake-Scenario": "error-429"},
        )


# -- fake upstream wire scenarios ------------------------------------------------------------


async def test_cut_drops_the_connection_mid_body(http: httpx.AsyncClient) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/chat/completions", json=body, headers={"X-Fake-Scenario": "cut"})
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(
            "/chat/completions", json={"model": "m"}, headers={"X-Fake-Scenario": "cut"}
        )


async def test_stall_hangs_until_the_client_leaves(
    http: httpx.AsyncClient, fake_upstream: FakeUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    received = b""
    with pytest.raises(httpx.ReadTimeout):
        async with http.stream(
            "POST",
            "/chat/completions",
            json=body,
            headers={"X-Fake-Scenario": "stall"},
            timeout=0.3,
        ) as response:
            async for data in response.aiter_bytes():
                received += data
    assert received.startswith(b"data: {") and b"[DONE]" not in received
    assert fake_upstream.wait_for_disconnects(1) == 1


async def test_slow_gzip_and_malformed(http: httpx.AsyncClient) -> None:
    body = {"model": "m", "stream": True}
    started = time.monotonic()
    response = await http.post(
        "/chat/completions",
        json=body,
        headers={"X-Fake-Scenario": "slow,gzip,chunks=3", "X-Fake-Delay-Ms": "40"},
    )
    assert time.monotonic() - started >= 0.04 * 5  # 6 events: role, 3 content, finish, [DONE]
    assert response.headers["content-encoding"] == "gzip"
    assert response.text.count("data: ") == 6 and response.text.endswith("data: [DONE]\n\n")

    async with http.stream(
        "POST",
        "/embeddings",
        json={"model": "e", "input": "a"},
        headers={"X-Fake-Scenario": "gzip"},
    ) as raw:
        compressed = b"".join([part async for part in raw.aiter_raw()])
    assert gzip.decompress(compressed).startswith(b'{"object":"list"')

    broken = await http.post(
        "/chat/completions", json={"model": "m"}, headers={"X-Fake-Scenario": "malformed"}
    )
    with pytest.raises(ValueError):
        broken.json()


async def test_unknown_scenario_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/chat/completions", json={}, headers={"X-Fake-Scenario": "slwo"})
    assert response.status_code == 400
    assert "slwo" in response.json()["error"]["message"]


async def test_unknown_path_answers_openai_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/nope", params={"a": "1"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


# -- server runners --------------------------------------------------------------------------


def _hello_app() -> Starlette:
    return Starlette(routes=[Route("/healthz", lambda request: PlainTextResponse("ok"))])


def test_run_asgi_server_sync() -> None:
    with run_asgi_server(_hello_app()) as url:
        assert httpx.get(f"{url}/healthz").text == "ok"


async def test_run_asgi_server_async() -> None:
    async with run_asgi_server_async(_hello_app()) as url, httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/healthz")).text == "ok"


def test_run_process_server_starts_and_terminates(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with run_process_server(argv, port, health_path="/", cwd=str(tmp_path)) as proc:
        assert proc.poll() is None
    assert proc.returncode is not None


@pytest.mark.parametrize("n", [0, 129, 10**9, "2", 1.5, True])
async def test_an_n_openai_refuses_is_a_400_naming_n(client: openai.AsyncOpenAI, n: Any) -> None:
    """As OpenAI bounds ``n``: a fuzzed n of a billion once made the fake build that many
    choices, and the test run ran out of memory."""
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=n)
    with pytest.raises(openai.BadRequestError) as legacy:
        await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", n=n)
    assert chat.value.param == legacy.value.param == "n"
