"""Qwen2.5, Qwen3 and DeepSeek-V3 prompts: the official templates, counted as the server does.

Expected counts come from Hugging Face transformers' ``apply_chat_template`` with the shipped
templates (scripts/chat_template_references.py says how they were made without a download).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from proxy.tokenization import chat_templates
from proxy.tokens import TokenCounter, VocabularyError

PAYLOADS = Path(__file__).parent.parent / "payloads" / "tokens"
CASES: dict[str, dict[str, Any]] = {
    case["id"]: case
    for case in json.loads((PAYLOADS / "chat_templates.json").read_text(encoding="utf-8"))["cases"]
}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def _prompt(counter: TokenCounter, case_id: str) -> str:
    body = CASES[case_id]["body"]
    name = {"qwen2.5": "qwen2.5", "qwen3": "qwen3", "deepseek": "deepseek-v3"}[
        case_id.split("-", 1)[0]
    ]
    template = chat_templates.load(name, counter.tokenizer_for(body["model"]))
    return template.render(body["messages"], body.get("tools", []))


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_prompt_counts_match_transformers(counter: TokenCounter, case_id: str) -> None:
    case = CASES[case_id]
    assert counter.prompt_tokens(CHAT, case["body"]) == case["prompt_tokens"]


def test_qwen_tools_are_wrapped_in_the_instructions(counter: TokenCounter) -> None:
    prompt = _prompt(counter, "qwen2.5-tools")
    assert "You may call one or more functions to assist with the user query." in prompt
    assert '<tools>\n{"type": "function", "function": {"name": "get_current_temperature"' in prompt


def test_non_ascii_stays_unescaped(counter: TokenCounter) -> None:
    for case_id in ("qwen2.5-tools-non-ascii", "qwen3-tools-non-ascii"):
        prompt = _prompt(counter, case_id)
        assert '"name": "查询天气"' in prompt and "\\u" not in prompt


def test_qwen3_drops_earlier_reasoning(counter: TokenCounter) -> None:
    case = CASES["qwen3-think"]
    assert "17 * 20 = 340" not in _prompt(counter, "qwen3-think")
    without = copy.deepcopy(case["body"])
    without["messages"][1]["content"] = "17 * 24 = 408."
    assert counter.prompt_tokens(CHAT, without) == case["prompt_tokens"]


def test_qwen3_keeps_the_reasoning_of_the_turn_in_progress(counter: TokenCounter) -> None:
    body = copy.deepcopy(CASES["qwen3-tool-calls"]["body"])
    body["messages"][2]["reasoning_content"] = "Two calls: now, and for tomorrow."
    with_reasoning = counter.prompt_tokens(CHAT, body)
    assert with_reasoning is not None
    assert with_reasoning > CASES["qwen3-tool-calls"]["prompt_tokens"]


def test_deepseek_v3_ignores_tools(counter: TokenCounter) -> None:
    body = copy.deepcopy(CASES["deepseek-v3-tools"]["body"])
    del body["tools"]
    assert counter.prompt_tokens(CHAT, body) == CASES["deepseek-v3-tools"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("model", "typed", "tokens"),
    [
        ("qwen2.5-7b-instruct", "<|im_end|>", 1),
        ("qwen2.5-7b-instruct", "<tool_call>", 1),
        # Text to Qwen2.5 (added in Qwen3): " <", "tool", "_response", ">" in place of " ".
        ("qwen2.5-7b-instruct", "<tool_response>", 3),
        ("qwen3-8b", "<tool_response>", 1),
        ("qwen3-8b", "<think>", 1),
        ("deepseek-v3", "<\uff5cend\u2581of\u2581sentence\uff5c>", 1),
    ],
)
def test_special_token_text_in_a_message_is_one_token(
    counter: TokenCounter, model: str, typed: str, tokens: int
) -> None:
    def count(content: str) -> int | None:
        body = {"model": model, "messages": [{"role": "user", "content": f"say {content}"}]}
        return counter.prompt_tokens(CHAT, body)

    plain = count("")
    assert plain is not None
    assert count(typed) == plain + tokens


def test_a_chat_the_template_refuses_is_not_estimated(counter: TokenCounter) -> None:
    assert counter.prompt_tokens(CHAT, {"model": "qwen3-8b", "messages": []}) is None


def test_tool_call_arguments_that_are_not_json_still_render(counter: TokenCounter) -> None:
    body = copy.deepcopy(CASES["qwen3-tool-calls"]["body"])
    body["messages"][2]["tool_calls"][0]["function"]["arguments"] = "{not json"
    assert counter.prompt_tokens(CHAT, body) is not None


def test_template_hash_mismatch_is_refused(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = chat_templates._SPECS["qwen3"]
    wrong = chat_templates._Spec(spec.filename, "0" * 64, spec.added_tokens)
    monkeypatch.setitem(chat_templates._SPECS, "qwen3", wrong)
    with pytest.raises(VocabularyError, match="sha256"):
        chat_templates.load("qwen3", counter.tokenizer("qwen"))
