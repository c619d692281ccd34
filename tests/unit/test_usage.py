"""Usage extraction against recorded provider payloads, plus hostile and odd input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.sse import SSESplitter, event_fields, parse_event_json
from proxy.usage import StreamAccumulator, Usage, is_usage_only_chunk, usage_from_payload

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
PROVIDER_DIRS = ("openai", "anthropic", "compat")


@dataclass(frozen=True)
class StreamExpectation:
    usage: Usage | None
    model: str | None
    text: str
    finished: bool = True
    usage_only_chunks: int = 0


BODIES: dict[str, Usage] = {
    "openai/chat_completion.json": Usage(16, 363, 379),
    "openai/chat_completion_cached.json": Usage(2006, 300, 2306, cached_tokens=1920),
    "openai/chat_completion_reasoning.json": Usage(
        1144, 1837, 2981, cached_tokens=1024, reasoning_tokens=1536
    ),
    "openai/chat_completion_audio.json": Usage(17, 40, 57, completion_audio_tokens=30),
    "openai/chat_completion_audio_in_out.json": Usage(
        97, 140, 237, prompt_audio_tokens=72, completion_audio_tokens=112
    ),
    "openai/completion_legacy.json": Usage(5, 7, 12),
    "openai/embeddings.json": Usage(8, 0, 8),
    "openai/response.json": Usage(865, 163, 1028, reasoning_tokens=128),
    "anthropic/message.json": Usage(10, 5, 15),
    # 1 fresh + 287 written to the cache + 30433 read from it.
    "anthropic/message_cached.json": Usage(
        30721, 67, 30788, cached_tokens=30433, cache_creation_tokens=287
    ),
    "anthropic/message_tool_use.json": Usage(472, 91, 563),
    "anthropic/message_tool_use_and_web_search.json": Usage(80, 60, 140),
    "openai/chat_completion_tool_calls.json": Usage(80, 46, 126),
    "openai/response_custom_tool_call.json": Usage(50, 20, 70),
    "compat/deepseek_reasoner.json": Usage(6, 92, 98, reasoning_tokens=81),
    "compat/deepseek_chat_cache_hit.json": Usage(1530, 203, 1733, cached_tokens=1408),
    "compat/vllm_chat_completion.json": Usage(42, 8, 50),
    "compat/ollama_chat_completion.json": Usage(33, 67, 100),
    # total_tokens 0 beside 5 prompt tokens: recorded as their sum, flagged.
    "compat/litellm_mock_embeddings.json": Usage(5, 0, 5, repaired=True),
}

NANO_TEXT = (
    "**Holiday Name:** Harmony Day\n\n**Date:** Celebrated annually on the first Saturday of May."
)

STREAMS: dict[str, StreamExpectation] = {
    "openai/chat_stream_include_usage.sse": StreamExpectation(
        Usage(16, 300, 316), "gpt-4.1-nano-2025-04-14", NANO_TEXT, usage_only_chunks=1
    ),
    "openai/chat_stream_no_usage.sse": StreamExpectation(
        None, "gpt-4.1-nano-2025-04-14", NANO_TEXT
    ),
    "openai/chat_stream_cut_short.sse": StreamExpectation(
        None, "gpt-4.1-nano-2025-04-14", "**Holiday Name:** Harmony Day\n\n", finished=False
    ),
    "openai/chat_stream_tool_calls.sse": StreamExpectation(
        Usage(63, 16, 79),
        "gpt-4o-2024-08-06",
        'get_weather{"location":"Paris, France"}',
        usage_only_chunks=1,
    ),
    "openai/chat_stream_parallel_tool_calls.sse": StreamExpectation(
        Usage(80, 46, 126),
        "gpt-4o-2024-08-06",
        'get_weather{"location": "Paris, France"}get_weather{"location": "Tokyo, Japan"}',
        usage_only_chunks=1,
    ),
    "openai/completion_legacy_stream.sse": StreamExpectation(
        Usage(5, 7, 12), "gpt-3.5-turbo-instruct", "\n\nThis is indeed a test", usage_only_chunks=1
    ),
    "openai/response_stream.sse": StreamExpectation(
        Usage(299, 12, 311), "gpt-5.1-codex-max", "The final result is **570**."
    ),
    "openai/response_stream_function_call.sse": StreamExpectation(
        Usage(865, 163, 1028, cached_tokens=768, reasoning_tokens=128),
        "gpt-5.1-codex-max",
        '{"a":12,"b":7,"op":"add"}',
    ),
    "openai/response_stream_incomplete.sse": StreamExpectation(
        Usage(2310, 64, 2374, cached_tokens=2048, reasoning_tokens=58),
        "gpt-5.1-codex-max",
        "Step 1: add 12 and",
    ),
    "anthropic/message_stream.sse": StreamExpectation(
        Usage(12, 30, 42),
        "claude-sonnet-4-5-20250929",
        "Hello! I'm doing well, thank you for asking. How are you doing today?"
        " Is there anything I can help you with?",
    ),
    "anthropic/message_stream_thinking.sse": StreamExpectation(
        Usage(69, 53, 122),
        "claude-sonnet-4-5-20250929",
        "The previous result was 925. Now I need to divide that by 5.\n\n925 ÷ 5 = 185"
        "925 ÷ 5 = 185",
    ),
    "anthropic/message_stream_tool_use.sse": StreamExpectation(
        Usage(849, 47, 896),
        "claude-haiku-4-5-20251001",
        '{"elements": [{"location": "San Francisco", "temperature": 58, "condition": "sunny"}]}',
    ),
    "anthropic/message_stream_delta_input_tokens.sse": StreamExpectation(
        Usage(61, 2, 63), "claude-opus-4-5-20251101", "pong"
    ),
    "anthropic/message_stream_cache_read.sse": StreamExpectation(
        Usage(42208, 21, 42229, cached_tokens=42203),
        "claude-opus-4-7",
        'I see "test" — is there something you\'d like me to do?',
    ),
    "compat/deepseek_reasoner_stream.sse": StreamExpectation(
        Usage(6, 44, 50, reasoning_tokens=31),
        "deepseek-reasoner",
        "Okay, the user said hello.Hello! How can I help?",
    ),
    "compat/vllm_stream_continuous_usage.sse": StreamExpectation(
        Usage(17, 8, 25), "Qwen/Qwen3-8B", "User greets.Hi there!", usage_only_chunks=1
    ),
    "compat/ollama_stream.sse": StreamExpectation(
        Usage(30, 6, 36), "qwen2.5-coder:7b-instruct-q8_0", "My name is Qwen.", usage_only_chunks=1
    ),
    "compat/llamacpp_stream_usage_on_finish_chunk.sse": StreamExpectation(
        Usage(21, 4, 25), "LiquidAI/LFM2-1.2B", "A good example?"
    ),
    "compat/litellm_stream.sse": StreamExpectation(
        None, "gpt-4o-mini-2024-07-18", "Hello! How can I help you today?"
    ),
    "compat/litellm_stream_include_usage.sse": StreamExpectation(
        Usage(12, 10, 22),
        "gpt-4o-mini-2024-07-18",
        "Hello! How can I help you today?",
        usage_only_chunks=1,
    ),
    "compat/json_spacing_stream.sse": StreamExpectation(
        None, "Qwen/Qwen2.5-7B-Instruct", "Paris is the capital."
    ),
    "compat/json_spacing_stream_include_usage.sse": StreamExpectation(
        Usage(14, 6, 20), "Qwen/Qwen2.5-7B-Instruct", "Paris is the capital.", usage_only_chunks=1
    ),
    "compat/llama_cpp_python_stream_crlf.sse": StreamExpectation(
        None, "models/mistral-7b-instruct-v0.2.Q4_K_M.gguf", "Paris."
    ),
}


def _stream_events(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    splitter = SSESplitter()
    parsed = []
    for event in splitter.feed(raw):
        event_type, data = event_fields(event)
        body = parse_event_json(data) if data is not None else None
        if body is not None:
            parsed.append((event_type, body))
    assert splitter.remainder() == b""
    return parsed


def test_every_payload_file_has_an_expectation() -> None:
    on_disk = {
        path.relative_to(PAYLOADS).as_posix()
        for directory in PROVIDER_DIRS
        for path in (PAYLOADS / directory).iterdir()
        if path.suffix in {".json", ".sse"}
    }
    assert on_disk == set(BODIES) | set(STREAMS)


@pytest.mark.parametrize("name", sorted(BODIES))
def test_usage_from_recorded_body(name: str) -> None:
    payload = json.loads((PAYLOADS / name).read_text(encoding="utf-8"))
    assert usage_from_payload(payload) == BODIES[name]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_accumulator_on_recorded_stream(name: str) -> None:
    expected = STREAMS[name]
    accumulator = StreamAccumulator()
    usage_only = 0
    for event_type, body in _stream_events((PAYLOADS / name).read_bytes()):
        usage_only += is_usage_only_chunk(body)
        accumulator.feed(body, event_type)
    assert accumulator.usage == expected.usage
    assert accumulator.response_model == expected.model
    assert accumulator.text == expected.text
    assert accumulator.finished is expected.finished
    assert usage_only == expected.usage_only_chunks


def test_openai_stream_with_include_usage_puts_null_usage_on_every_content_chunk() -> None:
    events = _stream_events((PAYLOADS / "openai/chat_stream_include_usage.sse").read_bytes())
    *content, last = [body for _, body in events]
    assert all("usage" in body and body["usage"] is None for body in content)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 316


def test_vllm_continuous_usage_last_chunk_wins() -> None:
    accumulator = StreamAccumulator()
    seen = []
    for event_type, body in _stream_events(
        (PAYLOADS / "compat/vllm_stream_continuous_usage.sse").read_bytes()
    ):
        accumulator.feed(body, event_type)
        assert accumulator.usage is not None
        seen.append(accumulator.usage.completion_tokens)
    assert seen == sorted(seen)
    assert accumulator.usage == Usage(17, 8, 25)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"usage": None},
        {"usage": {}},
        {"usage": "12"},
        {"usage": []},
        {"object": "response", "usage": None},
        {"type": "message", "usage": {"service_tier": "standard"}},
        {"usage": {"prompt_tokens": "12", "completion_tokens": -3, "total_tokens": 1.5}},
        {"usage": {"prompt_tokens": True, "completion_tokens": None}},
    ],
)
def test_no_usable_usage_gives_none(payload: dict[str, Any]) -> None:
    assert usage_from_payload(payload) is None


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4}, Usage(3, 4, 7)),
        # The provider's total is kept as reported, even when it disagrees.
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9}, Usage(3, 4, 9)),
        ({"prompt_tokens": 10, "completion_tokens": "x", "total_tokens": None}, Usage(10, 0, 10)),
        ({"prompt_tokens": 10, "completion_tokens": -1}, Usage(10, 0, 10)),
        ({"prompt_tokens": 10, "completion_tokens": 2.0}, Usage(10, 0, 10)),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
            Usage(10, 5, 15),
        ),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": [1],
                "completion_tokens_details": {"reasoning_tokens": "3", "audio_tokens": True},
            },
            Usage(10, 5, 15),
        ),
        # DeepSeek: OpenAI's field wins when present, its own is the fallback.
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 4},
                "prompt_cache_hit_tokens": 8,
            },
            Usage(10, 1, 11, cached_tokens=4),
        ),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {},
                "prompt_cache_hit_tokens": 8,
            },
            Usage(10, 1, 11, cached_tokens=8),
        ),
        # Embeddings carry no completion side.
        ({"prompt_tokens": 8, "total_tokens": 8}, Usage(8, 0, 8)),
    ],
)
def test_chat_usage_edge_cases(usage: dict[str, Any], expected: Usage) -> None:
    assert usage_from_payload({"object": "chat.completion", "usage": usage}) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # A total smaller than its parts is replaced by their sum, and flagged.
        ({"usage": {"prompt_tokens": 5, "total_tokens": 0}}, Usage(5, 0, 5, repaired=True)),
        (
            {"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 7}},
            Usage(7, 3, 10, repaired=True),
        ),
        (
            {
                "object": "response",
                "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 0},
            },
            Usage(4, 2, 6, repaired=True),
        ),
        (
            {
                "usageMetadata": {
                    "promptTokenCount": 8,
                    "candidatesTokenCount": 2,
                    "totalTokenCount": 0,
                }
            },
            Usage(8, 2, 10, repaired=True),
        ),
        # A total that agrees, is missing, or is larger (it may count what is not split out)
        # is the provider's.
        ({"usage": {"prompt_tokens": 5, "total_tokens": 5}}, Usage(5, 0, 5)),
        ({"usage": {"prompt_tokens": 5, "completion_tokens": 1}}, Usage(5, 1, 6)),
        (
            {"usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 9}},
            Usage(5, 1, 9),
        ),
        ({"usage": {"total_tokens": 0}}, Usage(0, 0, 0)),
    ],
)
def test_total_smaller_than_its_parts_is_repaired(payload: dict[str, Any], expected: Usage) -> None:
    assert usage_from_payload(payload) == expected


def test_responses_usage_without_details_or_total() -> None:
    payload = {"object": "response", "usage": {"input_tokens": 5, "output_tokens": 7}}
    assert usage_from_payload(payload) == Usage(5, 7, 12)


def test_anthropic_total_is_always_computed() -> None:
    payload = {
        "type": "message",
        "usage": {
            "input_tokens": 2,
            "cache_creation_input_tokens": "many",
            "cache_read_input_tokens": 100,
            "output_tokens": 3,
        },
    }
    assert usage_from_payload(payload) == Usage(102, 3, 105, cached_tokens=100)


def test_bare_usage_shape_is_recognised_without_envelope_hints() -> None:
    anthropic_like = {
        "usage": {"input_tokens": 1, "cache_read_input_tokens": 9, "output_tokens": 2}
    }
    responses_like = {"usage": {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}}
    assert usage_from_payload(anthropic_like) == Usage(10, 2, 12, cached_tokens=9)
    assert usage_from_payload(responses_like) == Usage(10, 2, 12)


def test_non_mapping_payload_gives_none() -> None:
    bad: Any = ["usage"]
    assert usage_from_payload(bad) is None


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"choices": [], "usage": {"prompt_tokens": 1}}, True),
        ({"choices": [], "usage": None}, False),
        ({"choices": []}, False),
        # LiteLLM's proxy: one empty choice after the finish_reason chunk.
        ({"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 1}}, True),
        (
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": None, "role": None},
                        "finish_reason": None,
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": 1},
            },
            True,
        ),
        ({"choices": [{"index": 0, "text": ""}], "usage": {"prompt_tokens": 1}}, True),
        # Usage on the finish chunk (llama.cpp) or on a content chunk (vLLM's continuous
        # stats) rides on a chunk the client must still get.
        (
            {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1},
            },
            False,
        ),
        (
            {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": {"prompt_tokens": 1}},
            False,
        ),
        (
            {
                "choices": [{"index": 0, "delta": {"role": "assistant"}}],
                "usage": {"prompt_tokens": 1},
            },
            False,
        ),
        ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}], "usage": {}}, False),
        ({"choices": [{"index": 0, "delta": {}, "logprobs": {"content": []}}], "usage": {}}, False),
        ({"choices": [{"index": 0, "delta": {}}], "usage": None}, False),
        ({"choices": ["x"], "usage": {"prompt_tokens": 1}}, False),
        ({"choices": None, "usage": {"prompt_tokens": 1}}, False),
        ({"type": "message_delta", "usage": {"output_tokens": 3}}, False),
    ],
)
def test_is_usage_only_chunk(event: dict[str, Any], expected: bool) -> None:
    assert is_usage_only_chunk(event) is expected


def test_text_is_joined_lazily_and_stays_consistent() -> None:
    accumulator = StreamAccumulator()
    assert accumulator.text == ""
    for piece in ["a", "b", "c"]:
        accumulator.feed({"choices": [{"index": 0, "delta": {"content": piece}}]})
    assert accumulator.text == "abc"
    assert accumulator.text == "abc"
    accumulator.feed({"choices": [{"index": 0, "delta": {"content": "d"}}]})
    assert accumulator.text == "abcd"


def test_all_chat_delta_kinds_are_collected() -> None:
    accumulator = StreamAccumulator()
    accumulator.feed(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "reasoning_content": "r1",
                        "reasoning": "r2",
                        "content": "c",
                        "refusal": "no",
                        "tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}],
                        "function_call": {"name": "g", "arguments": "[]"},
                    },
                }
            ]
        }
    )
    assert accumulator.text == "cnor1r2f{}g[]"
    assert not accumulator.finished


def test_failed_response_is_not_finished_and_keeps_its_usage() -> None:
    accumulator = StreamAccumulator()
    accumulator.feed({"type": "response.created", "response": {"model": "gpt-5", "usage": None}})
    accumulator.feed({"type": "response.output_text.delta", "delta": "Hel"})
    accumulator.feed(
        {
            "type": "response.failed",
            "response": {"model": "gpt-5", "usage": {"input_tokens": 4, "output_tokens": 1}},
        }
    )
    assert accumulator.usage == Usage(4, 1, 5)
    assert accumulator.text == "Hel"
    assert not accumulator.finished


def test_anthropic_event_type_can_come_from_the_event_line() -> None:
    accumulator = StreamAccumulator()
    accumulator.feed(
        {"message": {"model": "claude", "usage": {"input_tokens": 7}}}, "message_start"
    )
    accumulator.feed({"delta": {"type": "text_delta", "text": "hi"}}, "content_block_delta")
    accumulator.feed({"usage": {"output_tokens": 2}}, "message_delta")
    accumulator.feed({}, "message_stop")
    assert accumulator.usage == Usage(7, 2, 9)
    assert accumulator.text == "hi"
    assert accumulator.response_model == "claude"
    assert accumulator.finished


def test_anthropic_null_in_message_delta_does_not_erase_earlier_counts() -> None:
    accumulator = StreamAccumulator()
    accumulator.feed(
        {"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}
    )
    accumulator.feed({"type": "message_delta", "usage": {"input_tokens": None, "output_tokens": 9}})
    assert accumulator.usage == Usage(7, 9, 16)


@pytest.mark.parametrize(
    "event",
    [
        {"choices": "nope", "usage": 3, "model": 5},
        {"choices": [None, 1, "x", {"delta": "d", "text": 4}]},
        {"choices": [{"delta": {"tool_calls": [None, {"function": "f"}]}}]},
        {"type": "content_block_delta", "delta": None},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": 5}},
        {"type": "message_start", "message": "m"},
        {"type": "message_delta", "usage": [1]},
        {"type": "response.completed", "response": None},
        {"type": "response.completed", "response": {"usage": "u", "model": None}},
        {"type": 7},
    ],
)
def test_odd_events_are_ignored(event: dict[str, Any]) -> None:
    accumulator = StreamAccumulator()
    accumulator.feed(event)
    assert accumulator.usage is None
    assert accumulator.text == ""


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "message_start",
            "message_delta",
            "content_block_delta",
            "text_delta",
            "response.completed",
            "response.output_text.delta",
            "chat.completion.chunk",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "usage",
                    "choices",
                    "delta",
                    "message",
                    "response",
                    "model",
                    "content",
                    "text",
                    "tool_calls",
                    "function",
                    "finish_reason",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "prompt_tokens_details",
                    "cached_tokens",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6) | st.just({}))
def test_usage_from_payload_never_raises(payload: dict[str, Any]) -> None:
    usage = usage_from_payload(payload)
    assert usage is None or isinstance(usage, Usage)


@given(
    st.lists(
        st.tuples(
            st.dictionaries(
                st.sampled_from(
                    ["type", "usage", "choices", "delta", "message", "response", "model"]
                ),
                json_values,
                max_size=5,
            ),
            st.none() | st.text(max_size=20),
        ),
        max_size=10,
    )
)
def test_stream_accumulator_never_raises(events: list[tuple[dict[str, Any], str | None]]) -> None:
    accumulator = StreamAccumulator()
    for event, event_type in events:
        accumulator.feed(event, event_type)
        is_usage_only_chunk(event)
    assert isinstance(accumulator.text, str)
    usage = accumulator.usage
    assert (
        usage is None
        or min(
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens
        )
        >= 0
    )
