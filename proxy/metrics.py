"""Prometheus metrics, counted from finished records off the request path.

The record writer prepares each batch of exchanges into ``RequestRecord`` values in a worker
thread; :meth:`Metrics.observing` wraps that step so every prepared batch is counted there,
and the forwarding path does no extra work. The writer's queue and spool are read when
Prometheus scrapes. Each app owns its ``Metrics`` (and its registry), kept on ``app.state``.

Labels are bounded: ``model`` (as requested; clients choose it, so at most ``max_models``
distinct values, the rest counted as ``other``), ``upstream`` (from the config) and
``status`` (the HTTP status). Users and sessions are never labels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.records import CLIENT_DISCONNECTED, RequestRecord

if TYPE_CHECKING:
    from proxy.upstream_client import PoolStats

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", Counter, Histogram)

DEFAULT_MAX_MODELS = 200
OTHER_MODEL = "other"
NO_MODEL = "none"

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TOKEN_KINDS = (
    ("prompt", "prompt_tokens"),
    ("completion", "completion_tokens"),
    ("cached", "cached_tokens"),
    ("reasoning", "reasoning_tokens"),
)

WriterStats = Callable[[], Mapping[str, Any]]
PoolStatsReader = Callable[[], Sequence["PoolStats"]]
ReplicaStats = Callable[[], Mapping[str, Any]]


class Metrics:
    """The proxy's metrics in a registry of their own; ``observe`` counts records."""

    def __init__(self, *, max_models: int = DEFAULT_MAX_MODELS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_models = max_models
        self._models: set[str] = set()
        self._lock = threading.Lock()
        self._children: dict[tuple[object, ...], object] = {}
        by_status = ("model", "upstream", "status")
        by_model = ("model", "upstream")
        registry = self.registry
        self.requests = Counter(
            "tallyproxy_requests", "Proxied requests, by status", by_status, registry=registry
        )
        self.tokens = Counter(
            "tallyproxy_tokens",
            "Tokens by kind (prompt includes cached, completion includes reasoning)",
            (*by_model, "kind"),
            registry=registry,
        )
        self.cost = Counter(
            "tallyproxy_cost_usd",
            "Cost of the priced requests in USD (records keep the exact decimal)",
            by_model,
            registry=registry,
        )
        self.unpriced = Counter(
            "tallyproxy_unpriced_requests",
            "Requests with usage but no known price",
            by_model,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "tallyproxy_upstream_errors",
            "Requests the upstream failed: error answers, unreachable, timed out, broken streams",
            by_status,
            registry=registry,
        )
        self.client_disconnects = Counter(
            "tallyproxy_client_disconnects",
            "Streams the client left before the end",
            by_model,
            registry=registry,
        )
        self.latency = Histogram(
            "tallyproxy_request_duration_seconds",
            "Time to the last byte of the answer",
            by_model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "tallyproxy_time_to_first_token_seconds",
            "Streams: time to the first chunk",
            by_model,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        Gauge(
            "tallyproxy_build_info", "The running version", ("version",), registry=registry
        ).labels(__version__).set(1)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def track_writer(self, stats: WriterStats) -> None:
        """Expose the record writer's queue and spool, read at each scrape."""
        self.registry.register(_WriterCollector(stats))

    def track_pools(self, stats: PoolStatsReader) -> None:
        """Expose each upstream's connection pool (size, in use, waiting), read at each scrape."""
        self.registry.register(_PoolCollector(stats))

    def track_export(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Expose the OpenTelemetry export: spans sent, dropped, waiting; read at each scrape."""
        self.registry.register(_ExportCollector(stats))

    def track_replica(self, stats: ReplicaStats) -> None:
        """Expose the read replica's lag and whether reads go to it, read at each scrape."""
        self.registry.register(_ReplicaCollector(stats))

    def observing(
        self, prepare: Callable[[list[T]], list[RequestRecord]]
    ) -> Callable[[list[T]], list[RequestRecord]]:
        """Wrap the writer's ``prepare`` step so that each prepared batch is counted."""

        def prepare_and_count(items: list[T]) -> list[RequestRecord]:
            records = prepare(items)
            try:
                self.observe(records)
            except Exception:  # counting must never cost a record; the writer would retry
                log.exception("counting %d records for /metrics failed", len(records))
            return records

        return prepare_and_count

    def observe(self, records: Sequence[RequestRecord]) -> None:
        """Count finished records (called from the writer's worker thread)."""
        for record in records:
            self._observe_one(record)

    def _observe_one(self, record: RequestRecord) -> None:
        model = self.model_label(record.model)
        upstream = record.upstream
        status = str(record.status_code)
        child = self._child
        child(self.requests, model, upstream, status).inc()
        usage = record.usage
        if usage is not None:
            for kind, field in TOKEN_KINDS:
                count = getattr(usage, field)
                if count:
                    child(self.tokens, model, upstream, kind).inc(count)
            if record.cost_usd is None:
                child(self.unpriced, model, upstream).inc()
        if record.cost_usd is not None:
            child(self.cost, model, upstream).inc(float(record.cost_usd))
        if record.latency_ms is not None:
            child(self.latency, model, upstream).observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            child(self.ttft, model, upstream).observe(record.ttft_ms / 1000)
        if record.error == CLIENT_DISCONNECTED:
            child(self.client_disconnects, model, upstream).inc()
        elif record.error is not None:
            child(self.upstream_errors, model, upstream, status).inc()

    def _child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, looked up once: prometheus_client's own lookup
        validates and locks on every call, which cost more than the counting itself."""
        key = (id(metric), *labels)
        known = self._children.get(key)
        if known is None:
            known = self._children[key] = metric.labels(*labels)
        return cast(M, known)

    def model_label(self, model: str | None) -> str:
        """The model's label value: its name while fewer than ``max_models`` are known."""
        if model is None:
            return NO_MODEL
        with self._lock:
            if model in self._models:
                return model
            if len(self._models) < self.max_models:
                self._models.add(model)
                return model
        return OTHER_MODEL

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class _WriterCollector(Collector):
    """The writer's queue and spool as Prometheus sees them, read at scrape time."""

    def __init__(self, stats: WriterStats) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []  # not known before the first scrape: the spool part is optional

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        gauges = (
            ("queue_depth", "tallyproxy_writer_queue_depth", "Records not yet written nor spooled"),
            (
                "oldest_pending_age",
                "tallyproxy_writer_oldest_pending_seconds",
                "Age of the oldest record waiting for the writer",
            ),
            ("spool_records", "tallyproxy_spool_records", "Records in the spool, not yet replayed"),
            ("spool_bytes", "tallyproxy_spool_bytes", "Size of the spool on disk"),
            ("spool_max_bytes", "tallyproxy_spool_max_bytes", "Bound on the spool's size"),
            (
                "held_records",
                "tallyproxy_writer_held_records",
                "Records neither the database nor the spool took, held in memory",
            ),
        )
        for key, name, documentation in gauges:
            if key in stats:
                yield GaugeMetricFamily(name, documentation, value=stats[key])
        if "database_down_seconds" in stats:
            yield GaugeMetricFamily(
                "tallyproxy_database_down_seconds",
                "How long the database has been unavailable to the writer; 0 when it is up",
                value=stats["database_down_seconds"] or 0,
            )
        counters = (
            ("written_total", "tallyproxy_records_written", "Records inserted in the database"),
            ("dropped_total", "tallyproxy_records_dropped", "Records lost, all reasons"),
            ("spooled_total", "tallyproxy_records_spooled", "Records written to the spool"),
            ("replayed_total", "tallyproxy_records_replayed", "Spooled records since stored"),
            ("failed_batches", "tallyproxy_writer_failed_batches", "Batch writes that failed"),
        )
        for key, name, documentation in counters:
            if key in stats:
                yield CounterMetricFamily(name, documentation, value=stats[key])
        yield from _storage_state(stats)


def _storage_state(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """Whether records can be stored now, and the records lost so far by reason."""
    if "recordable" in stats:
        yield GaugeMetricFamily(
            "tallyproxy_records_recordable",
            "1 while a new record can be stored (database, spool or memory), else 0",
            value=1 if stats["recordable"] else 0,
        )
    if "lost" in stats:
        lost = CounterMetricFamily(
            "tallyproxy_records_lost",
            "Records lost, by reason: unstorable, queue_full, closed, unpreparable, refused, "
            "shutdown",
            labels=("reason",),
        )
        for reason, count in sorted(stats["lost"].items()):
            lost.add_metric((reason,), count)
        yield lost


class _PoolCollector(Collector):
    """Each upstream's connection pool, read at scrape time; labelled by name and URL."""

    def __init__(self, stats: PoolStatsReader) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = ["name", "upstream"]
        families = (
            ("max_connections", "tallyproxy_upstream_pool_max_connections", "Size of the pool"),
            ("in_use", "tallyproxy_upstream_pool_in_use", "Connections held by requests"),
            ("waiting", "tallyproxy_upstream_pool_waiting", "Requests waiting for a connection"),
        )
        pools = self._stats()
        for field, name, documentation in families:
            gauge = GaugeMetricFamily(name, documentation, labels=labels)
            for pool in pools:
                gauge.add_metric([pool.name, pool.url], getattr(pool, field))
            yield gauge
        exhausted = CounterMetricFamily(
            "tallyproxy_upstream_pool_exhausted",
            "Requests answered 503 because the pool stayed full for its pool_timeout",
            labels=labels,
        )
        for pool in pools:
            exhausted.add_metric([pool.name, pool.url], pool.exhausted_total)
        yield exhausted


class _ExportCollector(Collector):
    """The OTLP export (``telemetry``): what reached the collector and what did not."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield CounterMetricFamily(
            "tallyproxy_otlp_exported_spans",
            "Request spans the OTLP collector accepted",
            value=stats["exported_spans"],
        )
        yield CounterMetricFamily(
            "tallyproxy_otlp_dropped_spans",
            "Request spans not exported: the export queue was full or the collector refused",
            value=stats["dropped_spans"],
        )
        yield GaugeMetricFamily(
            "tallyproxy_otlp_queued_spans",
            "Request spans waiting for export",
            value=stats["queued_spans"],
        )


class _ReplicaCollector(Collector):
    """The read replica (``database.read_url``): its lag when known, and where reads go."""

    def __init__(self, stats: ReplicaStats) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats["lag_seconds"] is not None:
            yield GaugeMetricFamily(
                "tallyproxy_read_replica_lag_seconds",
                "How far the read replica was behind the primary at its last check",
                value=stats["lag_seconds"],
            )
        yield GaugeMetricFamily(
            "tallyproxy_read_replica_serving",
            "1 while reads go to the read replica, 0 while they go to the primary",
            value=1 if stats["reads_from"] == "replica" else 0,
        )
