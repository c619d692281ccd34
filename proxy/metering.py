"""Turning what the forwarder saw into a metered record: provider usage or a local estimate.

Runs off the request path, in a worker thread of the record writer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.pricing import NOTHING_CHARGED, Cost, PriceBook
from proxy.records import Exchange, RequestRecord, UsageSource
from proxy.tokens import TokenCounter
from proxy.unbilled import billed_nothing
from proxy.usage import Usage, gemini_texts

log = logging.getLogger(__name__)


def completion_text_from_payload(payload: Mapping[str, Any]) -> str:
    """Everything a non-streamed answer generated, for counting when it reports no usage."""
    parts: list[str] = []
    for choice in _dicts(payload.get("choices")):
        message = choice.get("message")
        if isinstance(message, dict):
            _collect_message(message, parts)
        text = choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    for item in _dicts(payload.get("output")):
        for content in _dicts(item.get("content")):
            text = content.get("text")
            if isinstance(text, str):
                parts.append(text)
        for key in ("name", "arguments"):
            value = item.get(key)
            if isinstance(value, str):
                parts.append(value)
    for candidate in _dicts(payload.get("candidates")):  # Gemini
        parts.extend(gemini_texts(candidate.get("content")))
    return "".join(parts)


def _collect_message(message: Mapping[str, Any], parts: list[str]) -> None:
    for key in ("content", "refusal", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str):
            parts.append(value)
    for call in _dicts(message.get("tool_calls")):
        function = call.get("function")
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                value = function.get(key)
                if isinstance(value, str):
                    parts.append(value)


def _dicts(value: object) -> Iterable[dict[str, Any]]:
    if isinstance(value, list):
        return (item for item in value if isinstance(item, dict))
    return ()


def wants_estimate(exchange: Exchange) -> bool:
    """Whether to keep what a local count needs: no provider usage, or sampled for drift."""
    return exchange.provider_usage is None or exchange.sample_estimate


def priced_model(exchange: Exchange) -> str | None:
    """The model to price: the answer names the exact snapshot; the request may be an alias."""
    return exchange.response_model or exchange.model


def meter(exchange: Exchange, counter: TokenCounter, prices: PriceBook) -> RequestRecord:
    """The record of one exchange: the provider's usage or an estimate of it, and its cost.

    A sampled exchange with provider usage also gets the local estimate, for the drift report.
    """
    estimate = _estimate(exchange, counter) if wants_estimate(exchange) else None
    usage: Usage | None = exchange.provider_usage
    source: UsageSource | None = "provider" if usage is not None else None
    if usage is None and estimate is not None:
        usage, source = estimate.usage, "estimated" if exchange.completed else "partial"
    cost: Cost | None = exchange.cost
    if cost is None and usage is not None:
        cost = prices.cost(
            priced_model(exchange), usage, provider=exchange.provider, at=exchange.created_at
        )
    elif cost is None and billed_nothing(
        method=exchange.method,
        status_code=exchange.status_code,
        model=exchange.model,
        has_usage=False,
        endpoint=exchange.endpoint,
    ):
        cost = NOTHING_CHARGED
    sampled = exchange.provider_usage is not None and estimate is not None
    return RequestRecord(
        id=exchange.id,
        created_at=exchange.created_at,
        endpoint=exchange.endpoint,
        method=exchange.method,
        status_code=exchange.status_code,
        stream=exchange.stream,
        model=exchange.model,
        response_model=exchange.response_model,
        upstream=exchange.upstream,
        session_id=exchange.session_id,
        user_id=exchange.user_id,
        properties=exchange.properties,
        usage=usage,
        usage_source=source,
        usage_repaired=source == "provider" and usage is not None and usage.repaired,
        cost_usd=None if cost is None else cost.usd,
        price_source=None if cost is None else cost.source or None,
        price_version=None if cost is None else cost.version or None,
        estimated_prompt_tokens=estimate.usage.prompt_tokens if sampled and estimate else None,
        estimated_completion_tokens=(
            estimate.usage.completion_tokens if sampled and estimate else None
        ),
        estimate_excludes=(",".join(estimate.excluded) or None) if estimate else None,
        latency_ms=exchange.latency_ms,
        ttft_ms=exchange.ttft_ms,
        error=exchange.error,
        key_id=exchange.key_id,
        session_path=exchange.session_path,
        session_name=exchange.session_name,
        trace_id=exchange.trace_id,
        span_id=exchange.span_id,
        downgraded_from=exchange.downgraded_from,
        tool_calls=exchange.tool_calls,
        tool_results=exchange.tool_results,
    )


def meter_batch(
    counter: TokenCounter, prices: PriceBook, exchanges: list[Exchange]
) -> list[RequestRecord]:
    """Meter a batch; the writer calls this in a worker thread."""
    return [meter(exchange, counter, prices) for exchange in exchanges]


@dataclass(frozen=True, slots=True)
class _Estimate:
    usage: Usage
    excluded: tuple[str, ...]


def _estimate(exchange: Exchange, counter: TokenCounter) -> _Estimate | None:
    """The local count of a successful exchange; None where the endpoint cannot be counted."""
    body = exchange.request_body
    if body is None or not 200 <= exchange.status_code < 300:
        return None
    try:
        prompt = counter.prompt_estimate(exchange.endpoint, body)
        if prompt is None:
            return None
        model = exchange.response_model or exchange.model or ""
        completion = counter.completion_tokens(model, exchange.completion_text)
    except Exception:
        # A counting bug must cost one estimate, never the record itself.
        log.exception("token estimate failed for record %s", exchange.id)
        return None
    usage = Usage(
        prompt_tokens=prompt.tokens,
        completion_tokens=completion,
        total_tokens=prompt.tokens + completion,
    )
    return _Estimate(usage, prompt.excluded)
