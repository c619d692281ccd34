"""Turning what the forwarder saw into a metered record: provider usage or a local estimate.

Runs off the request path, in a worker thread of the record writer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.pricing import Cost, PriceBook
from proxy.records import Exchange, RequestRecord, UsageSource
from proxy.tokens import TokenCounter
from proxy.usage import Usage

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
    """The record of one exchange: the provider's usage or an estimate of it, and its cost."""
    usage, source = _usage_of(exchange, counter)
    cost: Cost | None = exchange.cost
    if cost is None and usage is not None:
        cost = prices.cost(
            priced_model(exchange), usage, provider=exchange.provider, at=exchange.created_at
        )
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
        cost_usd=None if cost is None else cost.usd,
        price_source=None if cost is None else cost.source,
        price_version=None if cost is None else cost.version,
        latency_ms=exchange.latency_ms,
        ttft_ms=exchange.ttft_ms,
        error=exchange.error,
    )


def meter_batch(
    counter: TokenCounter, prices: PriceBook, exchanges: list[Exchange]
) -> list[RequestRecord]:
    """Meter a batch; the writer calls this in a worker thread."""
    return [meter(exchange, counter, prices) for exchange in exchanges]


def _usage_of(exchange: Exchange, counter: TokenCounter) -> tuple[Usage | None, UsageSource | None]:
    if exchange.provider_usage is not None:
        return exchange.provider_usage, "provider"
    body = exchange.request_body
    if body is None or not 200 <= exchange.status_code < 300:
        return None, None
    try:
        prompt = counter.prompt_tokens(exchange.endpoint, body)
        if prompt is None:
            return None, None
        model = exchange.response_model or exchange.model or ""
        completion = counter.completion_tokens(model, exchange.completion_text)
    except Exception:
        # A counting bug must cost one estimate, never the record itself.
        log.exception("token estimate failed for record %s", exchange.id)
        return None, None
    usage = Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    return usage, "estimated" if exchange.completed else "partial"
