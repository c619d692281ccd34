"""How much output a budget reservation holds for a request (``output_reservation``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.access.budgets import HoldRules, output_reservation
from proxy.records import Exchange
from proxy.spend.limits import max_output_tokens

RULES = HoldRules(default_max_output_tokens=4096)


def exchange(endpoint: str, model: str | None, body: dict[str, Any] | None) -> Exchange:
    return Exchange(
        id="r",
        created_at=datetime(2026, 12, 3, tzinfo=UTC),
        method="POST",
        endpoint=endpoint,
        upstream="http://upstream",
        stream=False,
        model=model,
        session_id=None,
        user_id=None,
        properties={},
        request_body=body,
    )


@pytest.mark.parametrize(
    ("endpoint", "model", "body", "expected"),
    [
        # The request's own bound wins, whichever field names it.
        ("/v1/chat/completions", "gpt-4o", {"max_tokens": 50}, 50),
        ("/v1/chat/completions", "gpt-4o", {"max_completion_tokens": 70}, 70),
        ("/v1/responses", "gpt-4o", {"max_output_tokens": 90}, 90),
        ("/v1/messages", "claude-haiku-4-5", {"max_tokens": 1024}, 1024),
        # Unbounded: the model's maximum from the model table (LiteLLM's numbers).
        ("/v1/chat/completions", "gpt-4o", {}, 16384),
        ("/v1/chat/completions", "gpt-4o-2024-11-20", {}, 16384),
        ("/v1/chat/completions", "openai/gpt-4o-mini", {}, 16384),
        ("/v1/responses", "o3", {}, 100000),
        ("/v1/chat/completions", "deepseek-chat", {}, 8192),
        ("/v1/messages", "claude-sonnet-4-5-20250929", {}, 64000),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", {}, 65535),
        ("/v1/completions", "gpt-3.5-turbo-instruct", {}, 4096),
        # Not in the table: the configured default.
        ("/v1/chat/completions", "qwen3-32b-local", {}, 4096),
        ("/v1/chat/completions", None, None, 4096),
        # Endpoints that write no tokens hold none.
        ("/v1/embeddings", "text-embedding-3-small", {}, 0),
        ("/v1/moderations", "omni-moderation-latest", {}, 0),
        # A bad bound is no bound.
        ("/v1/chat/completions", "gpt-4o", {"max_tokens": 0}, 16384),
        ("/v1/chat/completions", "gpt-4o", {"max_tokens": True}, 16384),
        ("/v1/chat/completions", "gpt-4o", {"max_tokens": "100"}, 16384),
    ],
)
def test_output_reservation(
    endpoint: str, model: str | None, body: dict[str, Any] | None, expected: int
) -> None:
    assert output_reservation(exchange(endpoint, model, body), RULES) == expected


def test_the_default_is_configurable() -> None:
    small = HoldRules(default_max_output_tokens=20)
    assert output_reservation(exchange("/v1/chat/completions", "unknown", {}), small) == 20


@pytest.mark.parametrize("model", ["", "nope", "gpt-4o/", "-20250101"])
def test_unknown_names_have_no_limit(model: str) -> None:
    assert max_output_tokens(model) is None
