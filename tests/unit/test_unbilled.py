"""Which requests without usage certainly cost nothing (recorded at 0, not as unpriced)."""

from __future__ import annotations

import pytest

from proxy.unbilled import billed_nothing

CASES = [
    # method, status, model, usage came back, not billed?
    ("GET", 200, None, False, True),  # GET /v1/models
    ("GET", 200, "gpt-4o", False, True),  # GET /v1/models/gpt-4o
    ("DELETE", 200, None, False, True),  # DELETE /v1/files/file-abc
    ("POST", 200, None, False, True),  # POST /v1/files (multipart upload, no model)
    ("POST", 400, "gpt-4o", False, True),  # invalid_request_error from the provider
    ("POST", 401, "gpt-4o", False, True),  # invalid_api_key
    ("POST", 429, "gpt-4o-mini", False, True),  # rate_limit_exceeded
    ("POST", 500, "gpt-4o", False, True),  # server_error
    ("POST", 502, "gpt-4o", False, True),  # upstream unreachable (the proxy's own 502)
    # Billed, price unknown: a success whose usage is unknown stays unpriced.
    ("POST", 200, "dall-e-3", False, False),
    ("POST", 201, "gpt-4o", False, False),
    # Usage came back: priced (or unpriced for lack of a price), whatever the status.
    ("POST", 200, "gpt-4o", True, False),
    ("POST", 500, "gpt-4o", True, False),  # a stream that failed after some tokens
    ("GET", 200, None, True, False),
    ("post", 400, "gpt-4o", False, True),  # methods compare case-insensitively
]


@pytest.mark.parametrize(("method", "status", "model", "has_usage", "unbilled"), CASES)
def test_billed_nothing(
    method: str, status: int, model: str | None, has_usage: bool, unbilled: bool
) -> None:
    got = billed_nothing(method=method, status_code=status, model=model, has_usage=has_usage)
    assert got is unbilled
