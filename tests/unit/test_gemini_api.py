"""Gemini's native API: the call a path names, native paths, keys in the query, its errors."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import BudgetExceeded, UpstreamTimeout, error_response, gemini_error_body
from proxy.gemini_api import GeminiCall, gemini_call, is_native, lift_query_key
from proxy.streaming import shutdown_event, shutdown_response
from proxy.unbilled import billed_nothing


@pytest.mark.parametrize(
    ("path", "call"),
    [
        (
            "models/gemini-2.5-flash:generateContent",
            GeminiCall("gemini-2.5-flash", "generateContent"),
        ),
        (
            "models/gemini-2.5-pro:streamGenerateContent",
            GeminiCall("gemini-2.5-pro", "streamGenerateContent"),
        ),
        (
            "models/gemini-2.0-flash-001:countTokens",
            GeminiCall("gemini-2.0-flash-001", "countTokens"),
        ),
        (
            "models/gemini-embedding-001:embedContent",
            GeminiCall("gemini-embedding-001", "embedContent"),
        ),
        ("tunedModels/my-model-x7:generateContent", GeminiCall("my-model-x7", "generateContent")),
        ("models/gemini-2.5-flash", None),  # models.get: no call
        ("models", None),
        ("files/abc-123", None),
        ("cachedContents", None),
        ("chat/completions", None),
        ("models/ft:gpt-4o-mini:org:custom:abc123", None),  # OpenAI's fine-tune names
        ("models/a/b:generateContent", None),
        ("models/:generateContent", None),
    ],
)
def test_gemini_call(path: str, call: GeminiCall | None) -> None:
    assert gemini_call(path) == call


@pytest.mark.parametrize(
    ("call", "stream", "billed"),
    [
        (GeminiCall("m", "generateContent"), False, True),
        (GeminiCall("m", "streamGenerateContent"), True, True),
        (GeminiCall("m", "countTokens"), False, False),
    ],
)
def test_a_call_streams_or_bills_by_its_method(
    call: GeminiCall, stream: bool, billed: bool
) -> None:
    assert (call.stream, call.billed) == (stream, billed)


@pytest.mark.parametrize(
    ("endpoint", "native"),
    [
        ("/v1beta/models/gemini-2.5-flash:generateContent", True),
        ("/v1beta/models", True),
        ("/v1beta/files", True),
        ("/v1/models/gemini-2.5-flash:generateContent", True),
        ("/v1/models/gemini-2.5-flash", False),  # the OpenAI API's models.retrieve
        ("/v1/models/ft:custom", False),  # a model name with a colon, not a Gemini method
        ("/v1beta/models/gemini-2.5-flash:someNewMethod", True),
        ("/v1/chat/completions", False),
        ("/v1/models", False),
    ],
)
def test_is_native(endpoint: str, native: bool) -> None:
    assert is_native(endpoint) is native


@pytest.mark.parametrize(
    ("query", "kept", "key"),
    [
        ("", "", None),
        ("alt=sse", "alt=sse", None),
        ("key=AIzaSyA-secret", "", "AIzaSyA-secret"),
        ("alt=sse&key=AIzaSyA-secret", "alt=sse", "AIzaSyA-secret"),
        ("key=tp-abc&alt=sse&pageSize=5", "alt=sse&pageSize=5", "tp-abc"),
        ("key=first&key=second", "", "second"),
        ("apikey=x&monkey=y", "apikey=x&monkey=y", None),  # other names ending in "key"
        ("key=a%2Bb%3D", "", "a+b="),
    ],
)
def test_lift_query_key(query: str, kept: str, key: str | None) -> None:
    assert lift_query_key(query) == (kept, key)


def test_gemini_error_body_has_googles_shape() -> None:
    body = gemini_error_body(429, "budget 'team' would be exceeded", "budget_exceeded")
    assert body == {
        "error": {
            "code": 429,
            "message": "budget 'team' would be exceeded",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "BUDGET_EXCEEDED",
                    "domain": "tallyproxy",
                }
            ],
        }
    }


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (BudgetExceeded("over"), "RESOURCE_EXHAUSTED"),
        (UpstreamTimeout("slow"), "DEADLINE_EXCEEDED"),
    ],
)
def test_error_response_in_the_gemini_shape(exc: BudgetExceeded, status: str) -> None:
    response = error_response(exc, shape="gemini")
    assert response.status_code == exc.status_code
    assert b'"status":"' + status.encode() + b'"' in response.body


@pytest.mark.parametrize(
    ("endpoint", "unbilled"),
    [
        ("/v1beta/models/gemini-2.5-flash:countTokens", True),
        ("/v1/models/gemini-2.5-flash:countTokens", True),
        ("/v1beta/models/gemini-2.5-flash:generateContent", False),
        ("/v1beta/cachedContents", False),
        ("/v1/chat/completions", False),
    ],
)
def test_count_tokens_is_never_billed(endpoint: str, unbilled: bool) -> None:
    got = billed_nothing(
        method="POST", status_code=200, model="gemini-2.5-flash", has_usage=False, endpoint=endpoint
    )
    assert got is unbilled


def test_a_stream_cut_by_shutdown_ends_with_a_google_error_event() -> None:
    """google-genai raises on a stream chunk that starts with ``{"error":``."""
    event = shutdown_event("gemini")
    assert event.startswith(b'\n\ndata: {"error":{"code":503,')
    assert orjson.loads(event.strip()[len(b"data: ") :])["error"]["status"] == "UNAVAILABLE"
    response = shutdown_response({}, "gemini")
    assert response.status_code == 503 and b'"status":"UNAVAILABLE"' in response.body
