"""Metrics counted from finished records, read back through Prometheus' own parser."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics
from proxy.records import RequestRecord
from proxy.usage import Usage
from tests.store.factory import make_record

UPSTREAM = "https://api.openai.com/v1"


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition: (name, labels) -> value."""
    text = metrics.exposition().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def total(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(metrics).items() if n == name and wanted <= ls)


def test_requests_tokens_and_cost_by_model_upstream_and_status() -> None:
    metrics = Metrics()
    usage = Usage(
        prompt_tokens=100,
        completion_tokens=40,
        total_tokens=140,
        cached_tokens=30,
        reasoning_tokens=25,
    )
    metrics.observe(
        [
            make_record(usage=usage, cost_usd=Decimal("0.000125")),
            make_record(usage=usage, cost_usd=Decimal("0.000375")),
            make_record(model="qwen-max", usage=usage, cost_usd=None),
            make_record(status_code=429, usage=None, cost_usd=None, error="rate limited"),
        ]
    )
    mini = {"model": "gpt-4o-mini", "upstream": UPSTREAM}
    assert value(metrics, "tallyproxy_requests_total", **mini, status="200") == 2
    assert value(metrics, "tallyproxy_requests_total", **mini, status="429") == 1
    assert value(metrics, "tallyproxy_tokens_total", **mini, kind="prompt") == 200
    assert value(metrics, "tallyproxy_tokens_total", **mini, kind="completion") == 80
    assert value(metrics, "tallyproxy_tokens_total", **mini, kind="cached") == 60
    assert value(metrics, "tallyproxy_tokens_total", **mini, kind="reasoning") == 50
    assert value(metrics, "tallyproxy_cost_usd_total", **mini) == pytest.approx(0.0005)
    qwen = {"model": "qwen-max", "upstream": UPSTREAM}
    assert value(metrics, "tallyproxy_unpriced_requests_total", **qwen) == 1
    assert value(metrics, "tallyproxy_cost_usd_total", **qwen) == 0
    assert value(metrics, "tallyproxy_upstream_errors_total", **mini, status="429") == 1
    assert total(metrics, "tallyproxy_upstream_errors_total") == 1


def test_latency_and_time_to_first_token_histograms_in_seconds() -> None:
    metrics = Metrics()
    metrics.observe(
        [
            make_record(latency_ms=80.0, ttft_ms=None),
            make_record(stream=True, latency_ms=3000.0, ttft_ms=400.0),
            make_record(stream=True, latency_ms=700.0, ttft_ms=40.0),
        ]
    )
    labels = {"model": "gpt-4o-mini", "upstream": UPSTREAM}
    latency = "tallyproxy_request_duration_seconds"
    assert value(metrics, f"{latency}_count", **labels) == 3
    assert value(metrics, f"{latency}_sum", **labels) == pytest.approx(3.78)
    assert value(metrics, f"{latency}_bucket", **labels, le="0.1") == 1
    assert value(metrics, f"{latency}_bucket", **labels, le="1.0") == 2
    ttft = "tallyproxy_time_to_first_token_seconds"
    assert value(metrics, f"{ttft}_count", **labels) == 2
    assert value(metrics, f"{ttft}_sum", **labels) == pytest.approx(0.44)
    assert value(metrics, f"{ttft}_bucket", **labels, le="0.05") == 1


def test_a_client_that_leaves_is_not_an_upstream_error() -> None:
    metrics = Metrics()
    metrics.observe(
        [
            make_record(stream=True, usage_source="partial", error="client disconnected"),
            make_record(
                stream=True, usage_source="partial", error="upstream ended the stream early"
            ),
            make_record(status_code=502, usage=None, cost_usd=None, error="cannot connect"),
        ]
    )
    labels = {"model": "gpt-4o-mini", "upstream": UPSTREAM}
    assert value(metrics, "tallyproxy_client_disconnects_total", **labels) == 1
    assert value(metrics, "tallyproxy_upstream_errors_total", **labels, status="200") == 1
    assert value(metrics, "tallyproxy_upstream_errors_total", **labels, status="502") == 1


def test_model_labels_are_capped_and_the_rest_is_other() -> None:
    metrics = Metrics(max_models=3)
    names = [f"model-{i}" for i in range(10)]
    metrics.observe([make_record(model=name) for name in names])
    metrics.observe([make_record(model="model-1"), make_record(model=None)])
    models = {
        dict(labels)["model"]: v
        for (name, labels), v in samples(metrics).items()
        if name == "tallyproxy_requests_total"
    }
    assert models == {"model-0": 1, "model-1": 2, "model-2": 1, "other": 7, "none": 1}


def test_observing_counts_each_prepared_batch_and_returns_it_unchanged() -> None:
    metrics = Metrics()
    prepared: list[list[int]] = []

    def prepare(items: list[int]) -> list[RequestRecord]:
        prepared.append(items)
        return [make_record(latency_ms=float(item)) for item in items]

    wrapped = metrics.observing(prepare)
    records = wrapped([1, 2, 3])
    assert [r.latency_ms for r in records] == [1.0, 2.0, 3.0]
    assert prepared == [[1, 2, 3]]
    assert total(metrics, "tallyproxy_requests_total") == 3


def test_a_failure_to_count_never_loses_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    def broken(records: Any) -> None:
        raise RuntimeError("boom")

    metrics.observe = broken  # type: ignore[method-assign]
    records = metrics.observing(lambda items: [make_record() for _ in items])([1, 2])
    assert len(records) == 2
    assert "counting 2 records for /metrics failed" in caplog.text


def test_writer_queue_and_spool_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    stats: dict[str, Any] = {
        "queue_depth": 7,
        "written_total": 100,
        "failed_batches": 1,
        "dropped_total": 2,
        "last_flush_at": None,
        "oldest_pending_age": 0.25,
        "healthy": True,
        "spool_records": 40,
        "spool_bytes": 8192,
        "spool_max_bytes": 1024**3,
        "spooled_total": 50,
        "replayed_total": 10,
        "database_down_seconds": None,
    }
    metrics.track_writer(lambda: stats)
    assert value(metrics, "tallyproxy_writer_queue_depth") == 7
    assert value(metrics, "tallyproxy_spool_records") == 40
    assert value(metrics, "tallyproxy_spool_bytes") == 8192
    assert value(metrics, "tallyproxy_database_down_seconds") == 0
    assert value(metrics, "tallyproxy_records_written_total") == 100
    assert value(metrics, "tallyproxy_records_dropped_total") == 2
    stats |= {"queue_depth": 0, "spool_records": 0, "database_down_seconds": 12.5}
    assert value(metrics, "tallyproxy_writer_queue_depth") == 0
    assert value(metrics, "tallyproxy_spool_records") == 0
    assert value(metrics, "tallyproxy_database_down_seconds") == 12.5


def test_lost_records_by_reason_held_records_and_whether_records_can_be_stored() -> None:
    metrics = Metrics()
    stats: dict[str, Any] = {
        "dropped_total": 7,
        "lost": {"unstorable": 5, "shutdown": 2},
        "recordable": False,
        "held_records": 40,
    }
    metrics.track_writer(lambda: stats)
    assert value(metrics, "tallyproxy_records_lost_total", reason="unstorable") == 5
    assert value(metrics, "tallyproxy_records_lost_total", reason="shutdown") == 2
    assert total(metrics, "tallyproxy_records_lost_total") == 7
    assert value(metrics, "tallyproxy_writer_held_records") == 40
    assert value(metrics, "tallyproxy_records_recordable") == 0
    stats |= {"recordable": True, "held_records": 0}
    assert value(metrics, "tallyproxy_records_recordable") == 1


def test_without_a_spool_only_the_queue_is_shown() -> None:
    metrics = Metrics()
    metrics.track_writer(lambda: {"queue_depth": 3, "written_total": 5, "dropped_total": 0})
    names = {name for name, _ in samples(metrics)}
    assert "tallyproxy_writer_queue_depth" in names
    assert not any(name.startswith("tallyproxy_spool") for name in names)


def test_two_instances_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()
    first.observe([make_record()])
    assert total(first, "tallyproxy_requests_total") == 1
    assert total(second, "tallyproxy_requests_total") == 0
    assert value(first, "tallyproxy_build_info", version=_version()) == 1


def _version() -> str:
    from proxy import __version__

    return __version__
