"""OpenTelemetry export: each stored record as a GenAI client span, and the GenAI metrics.

A real OTLP/HTTP receiver (decoding with opentelemetry-proto) stands in for the collector;
the openai and anthropic SDKs make chat, streamed chat, Responses, embeddings and Anthropic
messages calls, and every span's attributes must equal the stored record's fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.servers import free_port

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver().start()
    try:
        yield running
    finally:
        running.stop()


def _settings(fake_upstream: FakeUpstream, tmp_path: Path, endpoint: str, **telemetry: Any) -> Any:
    return proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/otel.db",
        upstreams=[
            {
                "name": "claude",
                "kind": "anthropic",
                "url": fake_upstream.base_url,
                "models": ["claude-*"],
            },
            {"name": "openai", "url": fake_upstream.base_url},
        ],
        database__flush_interval=0.05,
        telemetry={
            "otlp_endpoint": endpoint,
            "otlp_headers": {"x-collector-key": "collector-secret"},
            "service_name": "tally-test",
            "metric_interval": 0.2,
            **telemetry,
        },
    )


@pytest.fixture
async def exporting_proxy(
    fake_upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> AsyncIterator[RunningProxy]:
    async with start_proxy(_settings(fake_upstream, tmp_path, receiver.url)) as running:
        yield running


async def _one_of_each(proxy: RunningProxy) -> None:
    session = {"X-Session-Id": "agent-1", "X-Session-Path": "/plan", "X-User-Id": "alice"}
    traced = {**session, "traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}
    messages: Any = [{"role": "user", "content": "Plan a trip"}]
    await proxy.sdk.chat.completions.create(
        model="gpt-4o-mini", messages=messages, extra_headers=traced
    )
    stream = await proxy.sdk.chat.completions.create(
        model="gpt-4o", messages=messages, stream=True, extra_headers=session
    )
    async for _ in stream:
        pass
    await proxy.sdk.responses.create(model="gpt-4o-mini", input="Plan a trip")
    await proxy.sdk.embeddings.create(model="text-embedding-3-small", input="Lisbon")
    async with anthropic.AsyncAnthropic(
        base_url=proxy.url, api_key="sk-ant-test", max_retries=0
    ) as claude:
        await claude.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=messages)


def _by_record(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.attributes["tallyproxy.record_id"]: span for span in spans}


async def test_every_record_becomes_a_span_with_its_own_numbers(
    exporting_proxy: RunningProxy, fake_upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=1200, cached_tokens=1024, completion_tokens=80)
    await _one_of_each(exporting_proxy)
    records = await exporting_proxy.records(5)
    spans = _by_record(receiver.wait_for_spans(5))
    assert set(spans) == {r["id"] for r in records}
    operations = {}
    for record in records:
        span = spans[record["id"]]
        attributes = span.attributes
        operations[record["endpoint"]] = attributes["gen_ai.operation.name"]
        assert span.name == f"{attributes['gen_ai.operation.name']} {record['model']}"
        assert span.kind == SPAN_KIND_CLIENT
        assert span.resource["service.name"] == "tally-test"
        assert attributes["gen_ai.request.model"] == record["model"]
        assert attributes["gen_ai.response.model"] == record["response_model"]
        assert attributes["gen_ai.usage.input_tokens"] == record["prompt_tokens"]
        assert attributes["gen_ai.usage.output_tokens"] == record["completion_tokens"]
        assert attributes["gen_ai.usage.cache_read.input_tokens"] == record["cached_tokens"]
        assert (
            attributes["gen_ai.usage.cache_creation.input_tokens"]
            == record["cache_creation_tokens"]
        )
        assert attributes["gen_ai.usage.reasoning.output_tokens"] == record["reasoning_tokens"]
        assert Decimal(attributes["tallyproxy.cost_usd"]) == Decimal(record["cost_usd"])
        assert attributes["gen_ai.usage.cost"] == pytest.approx(float(record["cost_usd"]))
        assert attributes["tallyproxy.usage_source"] == record["usage_source"]
        assert attributes.get("gen_ai.conversation.id") == record["session_id"]
        assert attributes.get("tallyproxy.user_id") == record["user_id"]
        assert attributes.get("tallyproxy.session.path") == record["session_path"]
        expected_provider = "anthropic" if record["model"].startswith("claude") else "openai"
        assert attributes["gen_ai.provider.name"] == expected_provider
        assert (span.end_ns - span.start_ns) / 1e6 == pytest.approx(record["latency_ms"], abs=0.01)
        if record["trace_id"] is not None:  # the caller's trace: the span is its child
            assert (span.trace_id, span.parent_span_id) == (TRACE, CALLER_SPAN)
        else:  # a trace of its own, named by the record id
            assert (span.trace_id, span.parent_span_id) == (record["id"], "")
        assert span.span_id == record["id"][16:]
    assert operations == {
        "/v1/chat/completions": "chat",
        "/v1/responses": "chat",
        "/v1/embeddings": "embeddings",
        "/v1/messages": "chat",
    }
    assert "x-collector-key" in receiver.headers[0]  # the configured headers are sent

    usage = receiver.wait_for_metric("gen_ai.client.token.usage", points=9)
    by_type: dict[str, float] = {}
    for point in usage:
        kind = point["attributes"]["gen_ai.token.type"]
        by_type[kind] = by_type.get(kind, 0) + point["sum"]
    assert by_type["input"] == sum(r["prompt_tokens"] for r in records)
    assert by_type["output"] == sum(
        r["completion_tokens"] for r in records if r["endpoint"] != "/v1/embeddings"
    )
    duration = receiver.wait_for_metric("gen_ai.client.operation.duration", points=5)
    assert sum(p["sum"] for p in duration) == pytest.approx(
        sum(r["latency_ms"] for r in records) / 1000, rel=1e-6
    )
    first_chunk = receiver.wait_for_metric("gen_ai.client.operation.time_to_first_chunk", 1)
    (streamed,) = [r for r in records if r["stream"]]
    assert first_chunk[0]["sum"] == pytest.approx(streamed["ttft_ms"] / 1000, rel=1e-6)

    # The export process publishes its counts a moment after the collector took the spans.
    deadline = time.monotonic() + 5
    while True:
        scraped = (await exporting_proxy.api.get("/metrics")).text
        if "tallyproxy_otlp_exported_spans_total 5.0" in scraped or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert "tallyproxy_otlp_exported_spans_total 5.0" in scraped
    assert "tallyproxy_otlp_dropped_spans_total 0.0" in scraped
    assert "collector-secret" not in scraped


async def test_a_failed_request_is_an_error_span(
    exporting_proxy: RunningProxy, receiver: OtlpReceiver
) -> None:
    with pytest.raises(openai.RateLimitError):
        await exporting_proxy.sdk.with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-scenario": "error-429"},
        )
    (record,) = await exporting_proxy.records(1)
    (span,) = receiver.wait_for_spans(1)
    assert span.status_code == STATUS_ERROR
    assert span.attributes["error.type"] == "429"
    assert span.attributes["http.response.status_code"] == record["status_code"] == 429


@pytest.mark.parametrize("collector", ["refusing", "unreachable"])
async def test_a_collector_down_costs_spans_never_requests(
    fake_upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path, collector: str
) -> None:
    receiver.refuse = True
    endpoint = receiver.url if collector == "refusing" else f"http://127.0.0.1:{free_port()}"
    settings = _settings(fake_upstream, tmp_path, endpoint, export_timeout=0.5)
    async with start_proxy(settings) as proxy:
        await _one_of_each(proxy)
        records = await proxy.records(5)
        assert all(r["status_code"] == 200 for r in records)
        for _ in range(200):
            scraped = (await proxy.api.get("/metrics")).text
            if "tallyproxy_otlp_dropped_spans_total 5.0" in scraped:
                break
            await asyncio.sleep(0.05)
        assert "tallyproxy_otlp_dropped_spans_total 5.0" in scraped
        assert "tallyproxy_otlp_exported_spans_total 0.0" in scraped
    assert receiver.spans == []
