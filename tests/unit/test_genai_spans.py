"""Records to GenAI semantic-convention names and attributes; OTEL_* variables to settings."""

from decimal import Decimal

import pytest

from proxy.config import ConfigError, load_settings, otlp_headers
from proxy.genai_spans import (
    error_type,
    operation_name,
    provider_name,
    span_attributes,
    span_name,
    span_record,
    token_points,
)
from proxy.usage import Usage
from tests.store.factory import make_record


@pytest.mark.parametrize(
    ("endpoint", "operation"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/responses", "chat"),
        ("/v1/messages", "chat"),
        ("/v1/completions", "text_completion"),
        ("/v1/embeddings", "embeddings"),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "generate_content"),
        ("/v1/audio/speech", "audio.speech"),
    ],
)
def test_operation_names(endpoint: str, operation: str) -> None:
    assert operation_name(endpoint) == operation


@pytest.mark.parametrize(
    ("hint", "kind", "name"),
    [
        ("openai", "openai", "openai"),
        ("azure", "azure", "azure.ai.openai"),
        ("anthropic", "anthropic", "anthropic"),
        ("google", "openai-compatible", "gcp.gemini"),
        ("deepseek", "openai-compatible", "deepseek"),
        ("mistral", "openai-compatible", "mistral_ai"),
        ("my-gateway", "openai-compatible", "my-gateway"),
        (None, "openai-compatible", "openai"),
        (None, "azure", "azure.ai.openai"),
    ],
)
def test_provider_names(hint: str | None, kind: str, name: str) -> None:
    assert provider_name(hint, kind) == name


def test_a_record_without_usage_or_price_leaves_those_attributes_out() -> None:
    record = span_record(make_record(usage=None, usage_source=None, cost_usd=None, status_code=502,
                         error="upstream answered 502", session_id=None))  # fmt: skip
    attributes = span_attributes(record, "openai")
    assert not any(name.startswith("gen_ai.usage.") for name in attributes)
    assert "gen_ai.conversation.id" not in attributes
    assert attributes["error.type"] == "502"
    assert token_points(record) == []
    assert span_name(record) == "chat gpt-4o-mini"


def test_a_priced_record_carries_its_exact_cost_and_tokens() -> None:
    usage = Usage(prompt_tokens=1200, completion_tokens=80, total_tokens=1280, cached_tokens=1024,
                  reasoning_tokens=64)  # fmt: skip
    record = span_record(make_record(usage=usage, cost_usd=Decimal("0.000123456789")))
    attributes = span_attributes(record, "openai")
    assert attributes["gen_ai.usage.input_tokens"] == 1200
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attributes["gen_ai.usage.reasoning.output_tokens"] == 64
    assert attributes["tallyproxy.cost_usd"] == "0.000123456789"
    assert attributes["gen_ai.usage.cost"] == pytest.approx(0.000123456789)
    assert error_type(record) is None
    assert [(p.kind, p.tokens) for p in token_points(record)] == [("input", 1200), ("output", 80)]


def test_a_stream_cut_short_has_an_error_type_of_its_own() -> None:
    record = span_record(make_record(error="client disconnected mid-stream"))
    assert error_type(record) == "tallyproxy.client_disconnected_mid_stream"


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        ("api-key=secret", {"api-key": "secret"}),
        ("a=1, b=two%20words", {"a": "1", "b": "two words"}),
        ("Authorization=Basic%20dXNlcjpwYXNz", {"Authorization": "Basic dXNlcjpwYXNz"}),
    ],
)
def test_otlp_headers_variable(value: str, headers: dict[str, str]) -> None:
    assert otlp_headers(value) == headers


def test_the_standard_otel_variables_configure_the_export() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-key=k1",
        "OTEL_SERVICE_NAME": "billing-gateway",
    }
    telemetry = load_settings(None, environ=env).telemetry
    assert telemetry.otlp_endpoint == "http://collector:4318"
    assert telemetry.otlp_headers == {"x-key": "k1"}
    assert telemetry.service_name == "billing-gateway"
    disabled = load_settings(None, environ={**env, "OTEL_SDK_DISABLED": "true"})
    assert disabled.telemetry.otlp_endpoint is None
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_HEADERS"):
        load_settings(None, environ={**env, "OTEL_EXPORTER_OTLP_HEADERS": "no-equals"})
    with pytest.raises(ConfigError):
        load_settings(None, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})
