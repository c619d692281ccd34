"""Tool calls asked for by answers and tool results sent by requests, over provider payloads.

Streams are counted three ways that must agree: an accumulator fed every event, the tee
reading lazily (only usage events and tool-call starts parsed on the way) and the tee reading
everything (a sampled record, which needs the text for its estimate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.sse import SSESplitter, event_json
from proxy.tool_calls import may_start_tool_call, tool_calls_in, tool_results_in
from proxy.usage import StreamAccumulator
from tests.unit.test_tee import run_tee

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"


def payload(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return loaded


def events(name: str) -> list[bytes]:
    splitter = SSESplitter()
    found = splitter.feed((PAYLOADS / name).read_bytes())
    tail = splitter.remainder()
    return [*found, tail] if tail.strip() else found


@pytest.mark.parametrize(
    ("name", "calls"),
    [
        ("openai/chat_completion.json", 0),
        ("openai/chat_completion_tool_calls.json", 2),
        ("compat/vllm_chat_completion.json", 0),
        ("openai/response.json", 0),
        ("openai/response_custom_tool_call.json", 1),
        ("anthropic/message.json", 0),
        ("anthropic/message_tool_use.json", 1),
        # The web search Anthropic ran itself is not the client's tool call.
        ("anthropic/message_tool_use_and_web_search.json", 1),
        ("gemini/generate_content_thinking.json", 0),
        ("gemini/generate_content_function_call.json", 1),
        ("openai/embeddings.json", 0),
    ],
)
def test_the_tool_calls_an_answer_asks_for(name: str, calls: int) -> None:
    assert tool_calls_in(payload(name)) == calls


@pytest.mark.parametrize(
    ("body", "calls"),
    [
        ({"choices": [{"message": {"role": "assistant", "function_call": {"name": "f"}}}]}, 1),
        ({"choices": [{"message": {"tool_calls": None}}, {"message": "odd"}]}, 0),
        ({"choices": "odd", "output": [1, None], "candidates": [{"content": []}]}, 0),
        ({"type": "message", "content": None}, 0),
    ],
)
def test_odd_answers_count_what_they_plainly_hold(body: dict[str, Any], calls: int) -> None:
    assert tool_calls_in(body) == calls


@pytest.mark.parametrize(
    ("name", "results"),
    [
        ("requests/openai_chat_tool_results.json", 2),
        ("requests/openai_responses_tool_result.json", 1),
        ("requests/anthropic_tool_results.json", 2),
        ("requests/gemini_function_response.json", 1),
        ("tokens/chat_cookbook.json", 0),
    ],
)
def test_the_tool_results_a_request_sends_back(name: str, results: int) -> None:
    assert tool_results_in(payload(name)) == results


@pytest.mark.parametrize(
    ("body", "results"),
    [
        (None, 0),
        ({"input": "a plain string prompt"}, 0),
        ({"messages": [{"role": "function", "name": "f", "content": "42"}]}, 1),
        ({"messages": [{"role": "user", "content": "tool_result"}, "odd"]}, 0),
        ({"contents": [{"parts": None}, {"parts": [{"text": "hi"}]}]}, 0),
    ],
)
def test_odd_requests_count_what_they_plainly_hold(
    body: dict[str, Any] | None, results: int
) -> None:
    assert tool_results_in(body) == results


STREAMS = [
    ("openai/chat_stream_include_usage.sse", 0),
    ("openai/chat_stream_tool_calls.sse", 1),
    ("openai/chat_stream_parallel_tool_calls.sse", 2),
    ("openai/response_stream.sse", 0),
    ("openai/response_stream_function_call.sse", 1),
    ("anthropic/message_stream.sse", 0),
    ("anthropic/message_stream_tool_use.sse", 1),
    ("gemini/stream_thinking.sse", 0),
]


def accumulated(raw_events: list[bytes]) -> StreamAccumulator:
    accumulator = StreamAccumulator()
    for raw in raw_events:
        kind, event, _ = event_json(raw)
        if event is not None:
            accumulator.feed(event, kind)
    return accumulator


@pytest.mark.parametrize(("name", "calls"), STREAMS)
def test_a_stream_counts_its_calls_from_every_event(name: str, calls: int) -> None:
    assert accumulated(events(name)).tool_calls == calls


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize(("name", "calls"), STREAMS)
async def test_the_tee_counts_the_same_whether_it_reads_lazily_or_all(
    name: str, calls: int, sampled: bool
) -> None:
    _, exchange = await run_tee(events(name), strip_usage=False, sampled=sampled)
    assert exchange.provider_usage is not None
    assert exchange.tool_calls == calls


def gemini_call_stream() -> list[bytes]:
    """A Gemini stream whose call comes in a chunk without usage, which the tee would not
    parse for usage."""
    answer = payload("gemini/generate_content_function_call.json")
    call = {"candidates": answer["candidates"], "modelVersion": answer["modelVersion"]}
    end = {
        "candidates": [{"content": {"parts": [{"text": ""}], "role": "model"},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": answer["usageMetadata"],
        "modelVersion": answer["modelVersion"],
    }  # fmt: skip
    return [b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in (call, end)]


@pytest.mark.parametrize("sampled", [False, True])
async def test_a_gemini_call_in_a_chunk_without_usage_is_counted(sampled: bool) -> None:
    _, exchange = await run_tee(gemini_call_stream(), strip_usage=False, sampled=sampled)
    assert exchange.provider_usage is not None
    assert exchange.tool_calls == 1


def test_a_chat_call_without_an_index_counts_once_per_named_entry() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "function": {"name": "g", "arguments": "{}"}},
        {"function": {"arguments": "more"}},
    ]}}]}  # fmt: skip
    accumulator = StreamAccumulator()
    accumulator.feed(chunk)
    assert accumulator.tool_calls == 2


def test_a_call_named_again_in_later_deltas_still_counts_once() -> None:
    accumulator = StreamAccumulator()
    for piece in ("{", "}"):
        call = {"index": 0, "function": {"name": "f", "arguments": piece}}
        accumulator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    assert accumulator.tool_calls == 1


@pytest.mark.parametrize(
    ("raw", "read_now"),
    [
        (b'data: {"choices":[{"delta":{"content":"say \\"name\\" and tool_calls"}}]}\n\n', False),
        (
            b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":'
            b'"{\\"name\\": 1}"}}]}}]}\n\n',
            False,
        ),
        (
            b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f"}}]}}]}'
            b"\n\n",
            True,
        ),
        (
            b'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
            b'"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}\n\n',
            True,
        ),
        (
            b'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
            b'"content_block":{"type":"server_tool_use","id":"t","name":"web_search"}}\n\n',
            False,
        ),
        (
            b'data: {"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]}}]}\r\n\r\n',
            True,
        ),
    ],
)
def test_only_events_that_may_start_a_call_are_read_now(raw: bytes, read_now: bool) -> None:
    assert may_start_tool_call(raw) is read_now
