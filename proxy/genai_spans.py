"""Pure mapping of a stored record to OpenTelemetry GenAI spans and metric points.

Names and attributes follow the GenAI semantic conventions (v1.41): a client span per
request named ``"{gen_ai.operation.name} {gen_ai.request.model}"``, token counts as
``gen_ai.usage.*``, the session as ``gen_ai.conversation.id``; the cost as
``gen_ai.usage.cost`` (USD, as Bifrost and Langfuse read it) and tallyproxy's own attributes
under ``tallyproxy.*``. ``proxy.otlp_export`` turns these into SDK spans and exports them.

What a span is made of is a ``SpanRecord``: the exported fields of a stored record as plain
values, which cross to the export process in a quarter of a record's pickling time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from proxy.records import RequestRecord

AttributeValue = str | int | float | bool

_OPERATIONS: Final = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}

# gen_ai.provider.name's well-known values, by the provider hint of the upstream.
_PROVIDERS: Final = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
    "gemini": "gcp.gemini",
    "google-vertex": "gcp.vertex_ai",
    "deepseek": "deepseek",
    "mistral": "mistral_ai",
    "groq": "groq",
    "x-ai": "x_ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
    "aws-bedrock": "aws.bedrock",
}


@dataclass(frozen=True, slots=True)
class TokenPoint:
    """One value of ``gen_ai.client.token.usage``: ``kind`` is ``input`` or ``output``."""

    kind: str
    tokens: int


class SpanRecord(NamedTuple):
    """A stored record's exported fields; the token counts are all None without usage."""

    id: str
    start_ns: int
    """``created_at`` in nanoseconds since the epoch (microsecond precision)."""
    latency_ms: float | None
    ttft_ms: float | None
    endpoint: str
    status_code: int
    error: str | None
    stream: bool
    model: str | None
    response_model: str | None
    upstream: str | None
    session_id: str | None
    session_path: str | None
    session_name: str | None
    user_id: str | None
    key_id: str | None
    trace_id: str | None
    span_id: str | None
    usage_source: str | None
    cost_usd: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_creation_tokens: int | None
    reasoning_tokens: int | None


def span_record(record: RequestRecord) -> SpanRecord:
    usage = record.usage
    return SpanRecord(
        record.id,
        int(record.created_at.timestamp() * 1_000_000) * 1000,
        record.latency_ms,
        record.ttft_ms,
        record.endpoint,
        record.status_code,
        record.error,
        record.stream,
        record.model,
        record.response_model,
        record.upstream,
        record.session_id,
        record.session_path,
        record.session_name,
        record.user_id,
        record.key_id,
        record.trace_id,
        record.span_id,
        record.usage_source,
        None if record.cost_usd is None else str(record.cost_usd),
        None if usage is None else usage.prompt_tokens,
        None if usage is None else usage.completion_tokens,
        None if usage is None else usage.cached_tokens,
        None if usage is None else usage.cache_creation_tokens,
        None if usage is None else usage.reasoning_tokens,
    )


def operation_name(endpoint: str) -> str:
    """``chat``, ``embeddings``, ``text_completion``; other endpoints by their path."""
    if endpoint in _OPERATIONS:
        return _OPERATIONS[endpoint]
    if endpoint.endswith((":generateContent", ":streamGenerateContent")):
        return "generate_content"
    return endpoint.removeprefix("/v1/").replace("/", ".") or "request"


def provider_name(pricing_provider: str | None, kind: str | None) -> str:
    """``gen_ai.provider.name`` of the upstream that served a record."""
    if pricing_provider is not None:
        return _PROVIDERS.get(pricing_provider, pricing_provider)
    return {"azure": "azure.ai.openai", "anthropic": "anthropic"}.get(kind or "", "openai")


def span_name(record: SpanRecord) -> str:
    operation = operation_name(record.endpoint)
    return f"{operation} {record.model}" if record.model else operation


def error_type(record: SpanRecord) -> str | None:
    """``error.type``: the status code of an error answer, else what went wrong."""
    if record.status_code >= 400:
        return str(record.status_code)
    return None if record.error is None else "tallyproxy." + _slug(record.error)


def span_attributes(record: SpanRecord, provider: str) -> dict[str, AttributeValue]:
    """The attributes of a record's span; absent values are left out, never zeroed."""
    values: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": operation_name(record.endpoint),
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": record.model,
        "gen_ai.response.model": record.response_model,
        "gen_ai.conversation.id": record.session_id,
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": record.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": record.cache_creation_tokens,
        "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
        "gen_ai.usage.cost": None if record.cost_usd is None else float(record.cost_usd),
        "http.response.status_code": record.status_code,
        "error.type": error_type(record),
        "tallyproxy.record_id": record.id,
        "tallyproxy.endpoint": record.endpoint,
        "tallyproxy.usage_source": record.usage_source,
        "tallyproxy.cost_usd": record.cost_usd,
        "tallyproxy.user_id": record.user_id,
        "tallyproxy.key_id": record.key_id,
        "tallyproxy.session.path": record.session_path,
        "tallyproxy.session.name": record.session_name,
        "tallyproxy.stream": record.stream,
    }
    return {name: value for name, value in values.items() if value is not None}


def token_points(record: SpanRecord) -> list[TokenPoint]:
    """The record's ``gen_ai.client.token.usage`` values: none when its usage is unknown."""
    if record.input_tokens is None or record.output_tokens is None:
        return []
    points = [TokenPoint("input", record.input_tokens)]
    if operation_name(record.endpoint) != "embeddings":
        points.append(TokenPoint("output", record.output_tokens))
    return points


def metric_attributes(record: SpanRecord, provider: str) -> dict[str, AttributeValue]:
    """The attributes the GenAI client metrics carry (few: each combination is a series)."""
    values: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": operation_name(record.endpoint),
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": record.model,
        "gen_ai.response.model": record.response_model,
        "error.type": error_type(record),
    }
    return {name: value for name, value in values.items() if value is not None}


def _slug(text: str) -> str:
    head = text.split(":", 1)[0].strip().lower()
    return "".join(c if c.isalnum() else "_" for c in head)[:48] or "error"
