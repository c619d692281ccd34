"""The export's own histograms: OTLP explicit-bucket semantics, a series per attribute set."""

import pickle

import pytest
from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from proxy.genai_spans import SpanRecord, span_record
from proxy.otlp_histograms import ExplicitHistogram, metrics_data
from tests.store.factory import make_record

BOUNDS = (1, 4, 16)


@pytest.mark.parametrize(
    ("values", "counts"),
    [
        ([0], [1, 0, 0, 0]),
        ([1], [1, 0, 0, 0]),  # a bucket holds its upper bound
        ([1.5, 4], [0, 2, 0, 0]),
        ([5, 16, 17], [0, 0, 2, 1]),  # above the last bound: the overflow bucket
        ([], None),
    ],
)
def test_values_fall_in_explicit_buckets(values: list[float], counts: list[int] | None) -> None:
    histogram = ExplicitHistogram("t", "{token}", "test", BOUNDS)
    for value in values:
        histogram.record(value, {"gen_ai.token.type": "input"})
    metric = histogram.metric(start_ns=10, now_ns=20)
    if counts is None:
        assert metric is None
        return
    assert metric is not None and isinstance(metric.data, Histogram)
    (point,) = metric.data.data_points
    assert list(point.bucket_counts) == counts
    assert (point.count, point.sum) == (len(values), sum(values))
    assert (point.min, point.max) == (min(values), max(values))
    assert list(point.explicit_bounds) == list(BOUNDS)
    assert (point.start_time_unix_nano, point.time_unix_nano) == (10, 20)
    assert metric.data.aggregation_temporality is AggregationTemporality.CUMULATIVE


def test_each_attribute_set_is_a_series_and_totals_are_cumulative() -> None:
    histogram = ExplicitHistogram("t", "s", "test", BOUNDS)
    histogram.record(2, {"model": "a", "type": "input"})
    histogram.record(3, {"model": "b", "type": "input"})
    histogram.record(5, {"model": "a", "type": "input"})
    first = histogram.metric(0, 1)
    histogram.record(7, {"model": "a", "type": "input"})
    second = histogram.metric(0, 2)
    assert first is not None and second is not None
    assert isinstance(first.data, Histogram) and isinstance(second.data, Histogram)
    assert {p.attributes["model"]: p.sum for p in first.data.data_points} == {"a": 7, "b": 3}
    assert {p.attributes["model"]: p.sum for p in second.data.data_points} == {"a": 14, "b": 3}


def test_metrics_data_leaves_out_empty_histograms() -> None:
    used = ExplicitHistogram("used", "s", "", BOUNDS)
    used.record(1, {})
    scope = InstrumentationScope("tallyproxy")
    resource = Resource.create({"service.name": "t"})
    data = metrics_data(resource, scope, [used, ExplicitHistogram("empty", "s", "", BOUNDS)], 0, 1)
    assert data is not None
    (scoped,) = data.resource_metrics[0].scope_metrics
    assert [m.name for m in scoped.metrics] == ["used"]
    assert metrics_data(resource, scope, [ExplicitHistogram("e", "s", "", BOUNDS)], 0, 1) is None


def test_a_span_record_crosses_the_pipe_as_a_plain_tuple() -> None:
    stored = make_record()
    record = span_record(stored)
    row = pickle.loads(pickle.dumps(tuple(record)))
    assert SpanRecord._make(row) == record
    assert record.start_ns == int(stored.created_at.timestamp() * 1_000_000) * 1000
    assert record.cost_usd == str(stored.cost_usd)
