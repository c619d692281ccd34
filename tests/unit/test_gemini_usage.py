"""Gemini's usageMetadata against recorded payloads: bodies, SSE streams, the JSON array."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from proxy.json_stream import JsonArraySplitter
from proxy.pricing import PriceBook
from proxy.sse import SSESplitter, event_json
from proxy.usage import (
    StreamAccumulator,
    Usage,
    gemini_usage,
    response_model_of,
    usage_from_payload,
)

GEMINI = Path(__file__).resolve().parents[1] / "payloads" / "gemini"

# Thoughts are output (completion = candidates + thoughts, reasoning = thoughts); tool-use
# prompts are input (prompt = prompt + toolUse); cached audio is cached, not audio.
BODIES: dict[str, Usage | None] = {
    "generate_content_thinking.json": Usage(9, 272, 281, reasoning_tokens=244),
    "generate_content_complete_usage.json": Usage(
        82, 60, 142, cached_tokens=3, reasoning_tokens=56
    ),
    "generate_content_tool_use.json": Usage(144, 107, 251, reasoning_tokens=56),
    "generate_content_audio_cached.json": Usage(
        1612, 10, 1622, cached_tokens=1200, prompt_audio_tokens=400
    ),
    "generate_content_function_call.json": Usage(86, 24, 110),
    "count_tokens.json": None,
    "error_429.json": None,
    "error_api_key_invalid.json": None,
}
MODELS = {
    "generate_content_thinking.json": "gemini-3-pro-preview",
    "generate_content_complete_usage.json": "gemini-2.5-flash",
    "generate_content_tool_use.json": "gemini-3.6-flash",
    "generate_content_audio_cached.json": "gemini-2.5-flash",
    "generate_content_function_call.json": "gemini-2.5-flash",
}


@dataclass(frozen=True)
class StreamExpectation:
    usage: Usage | None
    model: str | None
    text: str
    finished: bool = True


STREAMS: dict[str, StreamExpectation] = {
    "stream_thinking.sse": StreamExpectation(
        Usage(9, 285, 294, reasoning_tokens=256),
        "gemini-3-pro-preview",
        'There are **3** "r"s in strawberry.\n\nHere is the breakdown: st**r**awbe**rr**y.',
    ),
    "stream_flash_tail.sse": StreamExpectation(
        Usage(4, 7989, 7993, reasoning_tokens=2042),
        "gemini-2.5-flash",
        "` and `last_fall_time`.\n        *   If a piece lands (can't move down further), it "
        "calls `lock_piece()`, `clear_lines()`, creates a new `current_piece` (from `next"
        "_piece`), and generates a new `next_piece`. It also checks for `game_over` if the new"
        " piece spawns directly into a collision.\n    *   **Drawing:** Calls all drawing "
        "functions to update the screen.\n    *   `stdscr.refresh()`: Updates the physical "
        "terminal screen with what's been drawn to the virtual screen.\n\nThis creates a "
        "functional, albeit basic, console Tetris game! You could extend it with more features"
        " like ghost pieces, hold functionality, sound, high scores, etc.",
    ),
    "stream_array.json": StreamExpectation(
        Usage(9, 208, 217, reasoning_tokens=185),
        "gemini-3-pro-preview",
        'There are **3** "r"s in strawberry.\n\nst**r**awbe**rr**y',
    ),
}


def _events(name: str) -> list[dict[str, Any]]:
    raw = (GEMINI / name).read_bytes()
    splitter: JsonArraySplitter | SSESplitter
    if name.endswith(".json"):  # streamGenerateContent without alt=sse
        splitter = JsonArraySplitter()
        parsed = [json.loads(element) for element in splitter.feed(raw)]
    else:
        splitter = SSESplitter()
        parsed = [event_json(event)[1] for event in splitter.feed(raw)]
    assert splitter.remainder() == b""
    return [event for event in parsed if event is not None]


def test_every_payload_file_has_an_expectation() -> None:
    on_disk = {path.name for path in GEMINI.iterdir() if path.suffix in {".json", ".sse"}}
    assert on_disk == set(BODIES) | set(STREAMS)


@pytest.mark.parametrize("name", sorted(BODIES))
def test_usage_from_recorded_body(name: str) -> None:
    payload = json.loads((GEMINI / name).read_text(encoding="utf-8"))
    assert usage_from_payload(payload) == BODIES[name]
    assert response_model_of(payload) == MODELS.get(name)


@pytest.mark.parametrize("name", sorted(name for name, usage in BODIES.items() if usage))
def test_extraction_agrees_with_genai_prices(name: str) -> None:
    """genai-prices' own mapping of usageMetadata, which its Google prices assume."""
    payload = json.loads((GEMINI / name).read_text(encoding="utf-8"))
    theirs = genai_prices.extract_usage(payload, provider_id="google").usage
    ours = usage_from_payload(payload)
    assert ours is not None
    assert ours.prompt_tokens == theirs.input_tokens
    assert ours.completion_tokens == theirs.output_tokens
    assert ours.cached_tokens == (theirs.cache_read_tokens or 0)
    assert ours.reasoning_tokens == (theirs.output_reasoning_tokens or 0)
    audio = (theirs.input_audio_tokens or 0) - (theirs.cache_audio_read_tokens or 0)
    assert ours.prompt_audio_tokens == audio


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_accumulator_on_recorded_stream(name: str) -> None:
    expected = STREAMS[name]
    accumulator = StreamAccumulator()
    for event in _events(name):
        accumulator.feed(event)
    assert accumulator.usage == expected.usage
    assert accumulator.response_model == expected.model
    assert accumulator.text == expected.text
    assert accumulator.finished is expected.finished


@pytest.mark.parametrize(
    ("metadata", "usage"),
    [
        ({}, None),
        ({"promptTokenCount": 12}, Usage(12, 0, 12)),  # the first chunk of a stream
        ({"totalTokenCount": 7}, Usage(0, 0, 7)),
        ({"promptTokenCount": "12", "candidatesTokenCount": True}, None),
        ({"promptTokenCount": -1, "candidatesTokenCount": 3}, Usage(0, 3, 3)),
        (
            {"promptTokenCount": 5, "candidatesTokenCount": 2, "thoughtsTokenCount": 9},
            Usage(5, 11, 16, reasoning_tokens=9),
        ),
        (
            {
                "promptTokenCount": 10,
                "candidatesTokenCount": 300,
                "totalTokenCount": 310,
                "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 300}],
            },
            Usage(10, 300, 310, completion_audio_tokens=300),
        ),
        (
            {
                "promptTokenCount": 10,
                "promptTokensDetails": [
                    {"modality": "AUDIO"},
                    "odd",
                    {"modality": "AUDIO", "tokenCount": 4},
                ],
            },
            Usage(10, 0, 10, prompt_audio_tokens=4),
        ),
    ],
)
def test_gemini_usage_on_odd_metadata(metadata: dict[str, Any], usage: Usage | None) -> None:
    assert gemini_usage(metadata) == usage


def test_a_stream_without_usage_metadata_has_no_usage_but_its_text() -> None:
    accumulator = StreamAccumulator()
    for event in _events("stream_thinking.sse"):
        event.pop("usageMetadata")
        accumulator.feed(event)
    assert accumulator.usage is None
    assert accumulator.finished and accumulator.text.startswith("There are **3**")


def test_function_calls_count_as_generated_text() -> None:
    accumulator = StreamAccumulator()
    part = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    accumulator.feed({"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]})
    assert accumulator.text == 'get_weather{"city":"Paris"}'


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


@pytest.mark.parametrize(
    "name",
    [
        "generate_content_thinking.json",
        "generate_content_complete_usage.json",
        "generate_content_tool_use.json",
        pytest.param(
            "generate_content_audio_cached.json",
            marks=pytest.mark.xfail(
                strict=True,
                reason="Usage has no cached-audio count: cached audio is priced at the cached "
                "text rate ($0.03/M on gemini-2.5-flash, not $0.10/M)",
            ),
        ),
    ],
)
def test_recorded_answers_cost_what_genai_prices_charges(book: PriceBook, name: str) -> None:
    payload = json.loads((GEMINI / name).read_text(encoding="utf-8"))
    model = payload["modelVersion"]
    theirs = genai_prices.calc_price(
        genai_prices.extract_usage(payload, provider_id="google").usage,
        model_ref=model,
        provider_id="google",
    )
    usage = usage_from_payload(payload)
    assert usage is not None
    ours = book.cost(model, usage, provider="google")
    assert ours is not None and ours.usd == theirs.total_price


@pytest.mark.parametrize(
    ("metadata", "usd"),
    [
        # Gemini 2.5 Pro up to 200K prompt tokens: $1.25 input, $0.125 cached, $10 output
        # (thoughts included): 100000 x 1.25 + 50000 x 0.125 + 3000 x 10 -> 0.16125
        (
            {
                "promptTokenCount": 150_000,
                "cachedContentTokenCount": 50_000,
                "candidatesTokenCount": 1000,
                "thoughtsTokenCount": 2000,
            },
            Decimal("0.16125"),
        ),
        # Past 200K every token pays $2.50 / $0.25 / $15:
        # 200000 x 2.5 + 50000 x 0.25 + 3000 x 15 -> 0.5575
        (
            {
                "promptTokenCount": 250_000,
                "cachedContentTokenCount": 50_000,
                "candidatesTokenCount": 1000,
                "thoughtsTokenCount": 2000,
            },
            Decimal("0.5575"),
        ),
        # Tool-use prompts are prompt tokens: 190K + 20K crosses the tier.
        (
            {
                "promptTokenCount": 190_000,
                "toolUsePromptTokenCount": 20_000,
                "candidatesTokenCount": 1000,
            },
            Decimal("0.54"),
        ),
    ],
)
def test_long_prompts_pay_googles_long_context_rates(
    book: PriceBook, metadata: dict[str, Any], usd: Decimal
) -> None:
    usage = gemini_usage(metadata)
    assert usage is not None
    cost = book.cost("gemini-2.5-pro", usage, provider="google")
    assert cost is not None and cost.usd == usd
