"""Anthropic Messages API estimates: approximate (stand-in tokenizer), so tested for shape."""

from __future__ import annotations

import pytest

from proxy.tokens import PromptEstimate, TokenCounter

MESSAGES = "/v1/messages"
MODEL = "claude-sonnet-4-5"


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def text(counter: TokenCounter, value: str) -> int:
    return counter.count_text(MODEL, value)


def test_claude_uses_the_claude_2_stand_in(counter: TokenCounter) -> None:
    assert not counter.tokenizer_for(MODEL).exact
    assert counter.tokenizer_for(MODEL).name == "claude"


def test_plain_messages(counter: TokenCounter) -> None:
    body = {
        "model": MODEL,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello, Claude. 你好"}],
    }
    expected = sum(
        text(counter, t)
        for t in ("Be brief.", "\n\nHuman: ", "Hello, Claude. 你好", "\n\nAssistant:")
    )
    assert counter.prompt_estimate(MESSAGES, body) == PromptEstimate(tokens=expected)


def test_blocks_system_blocks_and_exclusions(counter: TokenCounter) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    body = {
        "model": MODEL,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {"q": 1}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a cat"}],
            },
        ],
    }
    estimate = counter.prompt_estimate(MESSAGES, body)
    assert estimate is not None
    assert estimate.excluded == ("image",)
    parts = ("Be brief.", "What is this?", "look", '{"q": 1}', "a cat", "\n\nAssistant:")
    turns = 2 * text(counter, "\n\nHuman: ") + text(counter, "\n\nAssistant: ")
    assert estimate.tokens == sum(text(counter, p) for p in parts) + turns


@pytest.mark.parametrize(("choice", "overhead"), [(None, 346), ({"type": "any"}, 313)])
def test_tools_add_the_documented_system_prompt(
    counter: TokenCounter, choice: dict[str, str] | None, overhead: int
) -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}
    body = {**base, "tools": [tool, {"type": "web_search_20250305", "name": "web_search"}]}
    if choice is not None:
        body["tool_choice"] = choice
    without = counter.prompt_tokens(MESSAGES, base)
    estimate = counter.prompt_estimate(MESSAGES, body)
    assert without is not None and estimate is not None
    definition = (
        '{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}'
    )
    assert estimate.tokens == without + text(counter, definition) + overhead
    assert estimate.excluded == ("tool",)


def test_messages_without_messages_is_unknown(counter: TokenCounter) -> None:
    assert counter.prompt_estimate(MESSAGES, {"model": MODEL}) is None
