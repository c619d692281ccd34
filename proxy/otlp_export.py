"""OpenTelemetry export of stored records: a GenAI client span each, and the GenAI metrics.

Imported only when an OTLP endpoint is configured (the SDK costs memory and start-up time).
The writer hands each committed batch to ``submit``, which only queues it: a thread of its
own builds the spans with the official SDK and sends them with its OTLP/HTTP exporter, so an
unreachable or slow collector never slows a request. A batch that finds the queue full, or
that the collector does not take, is dropped and counted (``stats``, shown in /metrics).

Span ids come from the record: the span's trace is the caller's (``traceparent``) when there
was one, else the record id (128 bits) is the trace id; the span id is the record id's low 64
bits. Exporting a record twice (after a crash) gives the collector the same span twice.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Sequence
from datetime import datetime

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from proxy.config import Settings, UpstreamSettings
from proxy.genai_spans import (
    metric_attributes,
    provider_name,
    span_attributes,
    span_name,
    token_points,
)
from proxy.price_hint import provider_for_model, route_of_record
from proxy.records import RequestRecord, is_failure

log = logging.getLogger(__name__)

_STOP: list[RequestRecord] = []
# The conventions' advised bucket boundaries for the two histograms.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)  # fmt: skip
_SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip


class _RecordIds(IdGenerator):
    """Ids from the record whose span is being made (one thread makes them all)."""

    def __init__(self) -> None:
        self.record_id = ""

    def generate_trace_id(self) -> int:
        return _hex(self.record_id) or random.getrandbits(128)

    def generate_span_id(self) -> int:
        return _hex(self.record_id[16:]) or random.getrandbits(64)


class _Collect(SpanProcessor):
    """Keeps the ended spans for the exporter call of their batch."""

    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


class OtlpExport:
    """Spans and metrics of stored records, exported off the request path."""

    def __init__(self, settings: Settings) -> None:
        telemetry = settings.telemetry
        if telemetry.otlp_endpoint is None:
            raise ValueError("OtlpExport needs telemetry.otlp_endpoint")
        base = telemetry.otlp_endpoint.rstrip("/")
        headers = dict(telemetry.otlp_headers)
        resource = Resource.create({"service.name": telemetry.service_name})
        self._routes: Sequence[UpstreamSettings] = settings.routes
        self._queue: queue.Queue[list[RequestRecord]] = queue.Queue()
        self._room = telemetry.queue_size
        self._lock = threading.Lock()
        self._queued = 0
        self.exported_spans = 0
        self.dropped_spans = 0
        self._ids = _RecordIds()
        self._collect = _Collect()
        self._tracer_provider = TracerProvider(
            resource=resource, id_generator=self._ids, shutdown_on_exit=False
        )
        self._tracer_provider.add_span_processor(self._collect)
        self._tracer = self._tracer_provider.get_tracer("tallyproxy")
        self._spans = OTLPSpanExporter(
            endpoint=f"{base}/v1/traces", headers=headers, timeout=telemetry.export_timeout
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(
                endpoint=f"{base}/v1/metrics", headers=headers, timeout=telemetry.export_timeout
            ),
            export_interval_millis=telemetry.metric_interval * 1000,
            export_timeout_millis=telemetry.export_timeout * 1000,
        )
        self._meter_provider = MeterProvider(
            resource=resource, metric_readers=[reader], shutdown_on_exit=False
        )
        meter = self._meter_provider.get_meter("tallyproxy")
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed response",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._thread = threading.Thread(target=self._run, name="tallyproxy-otlp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, records: list[RequestRecord]) -> None:
        """Queue a committed batch for export; never blocks (the writer calls it)."""
        with self._lock:
            if self._queued + len(records) > self._room:
                self.dropped_spans += len(records)
                return
            self._queued += len(records)
        self._queue.put(records)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "exported_spans": self.exported_spans,
                "dropped_spans": self.dropped_spans,
                "queued_spans": self._queued,
            }

    def close(self, timeout: float = 5.0) -> None:
        """Export what is queued (for up to ``timeout`` seconds), then the last metrics."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._spans.shutdown()  # type: ignore[no-untyped-call]
        self._meter_provider.shutdown(timeout_millis=timeout * 1000)
        self._tracer_provider.shutdown()

    def _run(self) -> None:
        while True:
            records = self._queue.get()
            if records is _STOP:
                return
            try:
                self._export(records)
            except Exception:  # the thread must outlive a bad batch
                log.exception("exporting %d spans over OTLP failed", len(records))
                self._count(records, exported=False)

    def _export(self, records: list[RequestRecord]) -> None:
        for record in records:
            provider = self._provider(record)
            self._record_span(record, provider)
            self._record_metrics(record, provider)
        spans, self._collect.ended = self._collect.ended, []
        result = self._spans.export(spans)
        if result is not SpanExportResult.SUCCESS:
            log.warning("the OTLP collector did not take %d spans; dropped", len(spans))
        self._count(records, exported=result is SpanExportResult.SUCCESS)

    def _count(self, records: list[RequestRecord], *, exported: bool) -> None:
        with self._lock:
            self._queued -= len(records)
            if exported:
                self.exported_spans += len(records)
            else:
                self.dropped_spans += len(records)

    def _provider(self, record: RequestRecord) -> str:
        route = route_of_record(self._routes, record.upstream, record.model)
        if route is None:
            return provider_name(provider_for_model(self._routes, record.model), None)
        return provider_name(route.pricing_provider, route.kind)

    def _record_span(self, record: RequestRecord, provider: str) -> None:
        self._ids.record_id = record.id
        span = self._tracer.start_span(
            span_name(record),
            context=_caller(record),
            kind=SpanKind.CLIENT,
            attributes=span_attributes(record, provider),
            start_time=_nanoseconds(record.created_at),
        )
        if is_failure(record.status_code, record.error):
            span.set_status(Status(StatusCode.ERROR, record.error or str(record.status_code)))
        latency_ns = int((record.latency_ms or 0.0) * 1_000_000)
        span.end(end_time=_nanoseconds(record.created_at) + latency_ns)

    def _record_metrics(self, record: RequestRecord, provider: str) -> None:
        attributes = metric_attributes(record, provider)
        for point in token_points(record):
            self._token_usage.record(point.tokens, {**attributes, "gen_ai.token.type": point.kind})
        if record.latency_ms is not None:
            self._duration.record(record.latency_ms / 1000, attributes)
        if record.ttft_ms is not None:
            self._first_chunk.record(record.ttft_ms / 1000, attributes)


def _caller(record: RequestRecord) -> Context | None:
    """The caller's span (from ``traceparent``) as the parent, when the record has one."""
    if record.trace_id is None or record.span_id is None:
        return None
    parent = SpanContext(
        trace_id=int(record.trace_id, 16),
        span_id=int(record.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def _hex(text: str) -> int:
    """The number a hex id spells; 0 (an invalid id) for anything else."""
    try:
        return int(text, 16) if len(text) in (16, 32) else 0
    except ValueError:
        return 0


def _nanoseconds(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000
