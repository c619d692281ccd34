"""OpenTelemetry export of stored records: a GenAI client span each, and the GenAI metrics.

Imported only in the export process (``proxy.otlp_process``): the SDK costs memory and
start-up time. ``submit`` only queues a batch; a thread of its own makes the spans and
metric values and sends them with the official OTLP/HTTP exporters, so an unreachable or
slow collector never slows a request. A batch that finds the queue full, or that the
collector does not take, is dropped and counted (``stats``, shown in /metrics).

The spans are built as the SDK's ``ReadableSpan`` directly, not started and ended through a
tracer: the record already holds everything a span is, and the tracer's path (ids, attribute
cleaning, span processors) cost a quarter of the export's CPU. Span ids come from the
record: the span's trace is the caller's (``traceparent``) when there was one, else the
record id (128 bits) is the trace id; the span id is the record id's low 64 bits. Exporting
a record twice (after a crash) gives the collector the same span twice.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from proxy.config import Settings, UpstreamSettings
from proxy.genai_spans import (
    SpanRecord,
    metric_attributes,
    provider_name,
    span_attributes,
    span_name,
    token_points,
)
from proxy.otlp_histograms import ExplicitHistogram, metrics_data
from proxy.price_hint import provider_for_model, route_of_record
from proxy.records import is_failure

log = logging.getLogger(__name__)

_STOP: list[SpanRecord] = []
# The conventions' advised bucket boundaries for the two histograms.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)  # fmt: skip
_SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class OtlpExport:
    """Spans and metrics of stored records, exported off the request path."""

    def __init__(self, settings: Settings) -> None:
        telemetry = settings.telemetry
        if telemetry.otlp_endpoint is None:
            raise ValueError("OtlpExport needs telemetry.otlp_endpoint")
        base = telemetry.otlp_endpoint.rstrip("/")
        headers = dict(telemetry.otlp_headers)
        self._resource = Resource.create({"service.name": telemetry.service_name})
        self._scope = InstrumentationScope("tallyproxy")
        self._routes: Sequence[UpstreamSettings] = settings.routes
        self._providers: dict[tuple[str | None, str | None], str] = {}
        self._queue: queue.Queue[list[SpanRecord]] = queue.Queue()
        self._room = telemetry.queue_size
        self._lock = threading.Lock()
        self._queued = 0
        self.exported_spans = 0
        self.dropped_spans = 0
        self._spans = OTLPSpanExporter(
            endpoint=f"{base}/v1/traces", headers=headers, timeout=telemetry.export_timeout
        )
        self._metrics = OTLPMetricExporter(
            endpoint=f"{base}/v1/metrics", headers=headers, timeout=telemetry.export_timeout
        )
        self._metric_interval = telemetry.metric_interval
        self._started_ns = time.time_ns()
        self._token_usage = ExplicitHistogram(
            "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used",
            _TOKEN_BUCKETS,
        )  # fmt: skip
        self._duration = ExplicitHistogram(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration", _SECONDS_BUCKETS
        )
        self._first_chunk = ExplicitHistogram(
            "gen_ai.client.operation.time_to_first_chunk", "s",
            "Time to receive the first chunk of a streamed response", _SECONDS_BUCKETS,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="tallyproxy-otlp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, records: list[SpanRecord]) -> None:
        """Queue a batch for export; never blocks."""
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
        """Export what is queued and the last metrics (for up to ``timeout`` seconds)."""
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._spans.shutdown()  # type: ignore[no-untyped-call]
        self._metrics.shutdown(timeout_millis=timeout * 1000)

    def _run(self) -> None:
        metrics_due = time.monotonic() + self._metric_interval
        while True:
            try:
                records = self._queue.get(timeout=max(0.0, metrics_due - time.monotonic()))
            except queue.Empty:
                records = None
            if records is _STOP:
                self._send_metrics()
                return
            if records is not None:
                try:
                    self._export(records)
                except Exception:  # the thread must outlive a bad batch
                    log.exception("exporting %d spans over OTLP failed", len(records))
                    self._count(records, exported=False)
            if time.monotonic() >= metrics_due:
                self._send_metrics()
                metrics_due = time.monotonic() + self._metric_interval

    def _export(self, records: list[SpanRecord]) -> None:
        spans = []
        for record in records:
            provider = self._provider(record)
            spans.append(self._span(record, provider))
            self._record_metrics(record, provider)
        result = self._spans.export(spans)
        if result is not SpanExportResult.SUCCESS:
            log.warning("the OTLP collector did not take %d spans; dropped", len(spans))
        self._count(records, exported=result is SpanExportResult.SUCCESS)

    def _count(self, records: list[SpanRecord], *, exported: bool) -> None:
        with self._lock:
            self._queued -= len(records)
            if exported:
                self.exported_spans += len(records)
            else:
                self.dropped_spans += len(records)

    def _provider(self, record: SpanRecord) -> str:
        key = (record.upstream, record.model)
        name = self._providers.get(key)
        if name is None:
            route = route_of_record(self._routes, record.upstream, record.model)
            if route is None:
                name = provider_name(provider_for_model(self._routes, record.model), None)
            else:
                name = provider_name(route.pricing_provider, route.kind)
            if len(self._providers) < 10_000:  # models are few; bound it anyway
                self._providers[key] = name
        return name

    def _span(self, record: SpanRecord, provider: str) -> ReadableSpan:
        parent = _caller(record)
        trace_id = parent.trace_id if parent else _hex(record.id) or random.getrandbits(128)
        span_id = _hex(record.id[16:]) or random.getrandbits(64)
        status = Status()
        if is_failure(record.status_code, record.error):
            status = Status(StatusCode.ERROR, record.error or str(record.status_code))
        latency_ns = int((record.latency_ms or 0.0) * 1_000_000)
        return ReadableSpan(
            name=span_name(record),
            context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED),
            parent=parent,
            resource=self._resource,
            attributes=span_attributes(record, provider),
            kind=SpanKind.CLIENT,
            status=status,
            start_time=record.start_ns,
            end_time=record.start_ns + latency_ns,
            instrumentation_scope=self._scope,
        )

    def _record_metrics(self, record: SpanRecord, provider: str) -> None:
        attributes = metric_attributes(record, provider)
        for point in token_points(record):
            self._token_usage.record(point.tokens, {**attributes, "gen_ai.token.type": point.kind})
        if record.latency_ms is not None:
            self._duration.record(record.latency_ms / 1000, attributes)
        if record.ttft_ms is not None:
            self._first_chunk.record(record.ttft_ms / 1000, attributes)

    def _send_metrics(self) -> None:
        histograms = (self._token_usage, self._duration, self._first_chunk)
        data = metrics_data(
            self._resource, self._scope, histograms, self._started_ns, time.time_ns()
        )
        if data is None:
            return
        try:
            result = self._metrics.export(data)
        except Exception:  # a metric export must never end the thread
            log.exception("exporting metrics over OTLP failed")
            return
        if result is not MetricExportResult.SUCCESS:
            log.warning("the OTLP collector did not take the metrics")


def _caller(record: SpanRecord) -> SpanContext | None:
    """The caller's span (from ``traceparent``), the parent, when the record has one."""
    if record.trace_id is None or record.span_id is None:
        return None
    return SpanContext(
        trace_id=int(record.trace_id, 16),
        span_id=int(record.span_id, 16),
        is_remote=True,
        trace_flags=_SAMPLED,
    )


def _hex(text: str) -> int:
    """The number a hex id spells; 0 (an invalid id) for anything else."""
    try:
        return int(text, 16) if len(text) in (16, 32) else 0
    except ValueError:
        return 0
