"""What one proxied request leaves behind.

``Exchange`` is what the forwarder observed, cheap to build on the request path.
``RequestRecord`` is the finished, metered record that the store writes; turning the first
into the second (token estimation, pricing) happens off the request path.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from proxy.pricing import Cost
from proxy.usage import Usage

UsageSource = Literal["provider", "estimated", "partial"]

CLIENT_DISCONNECTED = "client disconnected"
"""The error of an exchange whose client left before the answer ended."""

PROXY_SHUTTING_DOWN = "proxy shutting down: the answer was cut before its end"
"""The error of a request still in flight when the proxy's shutdown grace ran out."""


def new_record_id() -> str:
    """32 hex digits whose lexical order is creation order: 48-bit ms clock, 80 random bits."""
    # Unique, not secret: Python's generator (reseeded in forked children) does, without a
    # system call per request.
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def is_failure(status_code: int | None, error: str | None) -> bool:
    """A failed request, wherever errors are counted: an error status, or an error noted
    (a stream cut short, an upstream gone)."""
    return (status_code is not None and status_code >= 400) or error is not None


@dataclass(slots=True)
class Exchange:
    """Everything the forwarder saw of one request and its response."""

    id: str
    created_at: datetime
    method: str
    endpoint: str
    upstream: str
    stream: bool
    model: str | None
    session_id: str | None
    user_id: str | None
    properties: dict[str, str]
    provider: str | None = None
    key_id: str | None = None
    sample_estimate: bool = False
    request_body: dict[str, Any] | None = None
    status_code: int = 0
    response_model: str | None = None
    provider_usage: Usage | None = None
    cost: Cost | None = None
    completion_text: str = ""
    completed: bool = False
    latency_ms: float | None = None
    ttft_ms: float | None = None
    error: str | None = None
    session_path: str | None = None
    session_name: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    downgraded_from: str | None = None
    """The model the client asked for, when a budget action sent ``model`` instead."""
    tool_calls: int = 0
    tool_results: int = 0


@dataclass(slots=True)
class RequestRecord:
    """One stored row: the public record of the contract."""

    id: str
    created_at: datetime
    endpoint: str
    method: str
    status_code: int
    stream: bool
    model: str | None
    response_model: str | None
    upstream: str
    session_id: str | None
    user_id: str | None
    properties: dict[str, str] = field(default_factory=dict)
    usage: Usage | None = None
    usage_source: UsageSource | None = None
    # The provider's total was smaller than its parts, and replaced by their sum.
    usage_repaired: bool = False
    cost_usd: Decimal | None = None
    price_source: str | None = None
    price_version: str | None = None
    # The local count beside the provider's, on sampled records (drift), and what any local
    # count left out (e.g. "image"), so an estimate is never silently low.
    estimated_prompt_tokens: int | None = None
    estimated_completion_tokens: int | None = None
    estimate_excludes: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    error: str | None = None
    key_id: str | None = None
    # Where in its session the request was made (X-Session-Path, X-Session-Name), and the
    # caller's trace and span (traceparent), so records join the app's own traces.
    session_path: str | None = None
    session_name: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    # The model the client asked for, when a budget action sent ``model`` instead.
    downgraded_from: str | None = None
    # The tool calls the answer asked for, and the tool results the request sent back.
    tool_calls: int = 0
    tool_results: int = 0
