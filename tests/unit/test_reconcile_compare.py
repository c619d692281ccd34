"""The comparison: provider rows beside local cells, differences, unpriced, bypass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from proxy.reconcile.compare import (
    OTHER_KEYS,
    LocalCell,
    alerting,
    aligned,
    compare,
    model_family,
)
from proxy.reconcile.render import reconciliation_json, render_csv, render_table
from proxy.reconcile.reports import CostRow, UsageRow

D0 = datetime(2026, 11, 1, tzinfo=UTC)
D1 = D0 + timedelta(days=1)
D2 = D0 + timedelta(days=2)
PROXY = "https://api.openai.com/v1"
OTHER = "https://eu.api.openai.com/v1"


def usage(start: datetime, model: str, key: str, requests: int | None, i: int, o: int,
          cached: int = 0) -> UsageRow:  # fmt: skip
    return UsageRow(start, start + timedelta(days=1), model, "proj_1", key, requests, i, cached, o)


def cell(start: datetime, model: str, requests: int, i: int, o: int, cost: str = "0",
         unpriced: int = 0, upstream: str = PROXY, failed: int = 0) -> LocalCell:  # fmt: skip
    return LocalCell(start, upstream, model, requests, failed, i, 0, o, Decimal(cost), unpriced)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o", "gpt-4o"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("text-embedding-3-small", "text-embedding-3-small"),
        (None, None),
    ],
)
def test_model_family(model: str | None, family: str | None) -> None:
    assert model_family(model) == family


def test_rows_by_day_and_model_with_differences() -> None:
    result = compare(
        "openai", "1d", D0, D2,
        [usage(D0, "gpt-4o-2024-08-06", "key_a", 10, 1000, 500),
         usage(D0, "gpt-4o-2024-08-06", "key_b", 2, 200, 100),
         usage(D1, "gpt-4o-mini-2024-07-18", "key_a", 4, 400, 40)],
        [CostRow(D0, D1, "gpt-4o-2024-08-06", "proj_1", Decimal("0.0100")),
         CostRow(D0, D1, None, "proj_1", Decimal("0.0020"))],
        [cell(D0, "gpt-4o", 11, 1150, 600, "0.0090", unpriced=1, failed=1),
         cell(D1, "gpt-4o-mini", 4, 400, 40, "0.0001")],
        closed_before=D1 + timedelta(hours=12),
    )  # fmt: skip
    first, second = result.rows
    assert (first.model, first.api_key_id, first.start) == ("gpt-4o", None, D0)
    assert first.provider.requests == 12 and first.local.requests == 10  # a failure left out
    assert first.differences["input_tokens"].absolute == 50
    assert first.differences["input_tokens"].relative == Decimal("0.041667")
    assert first.differences["cost_usd"].absolute == Decimal("0.0010")
    assert first.unpriced_requests == 1
    assert first.bypass is None  # no held keys: nothing to attribute
    assert second.differences["output_tokens"].relative == 0
    day0, day1 = result.buckets
    assert day0.closed and not day1.closed
    assert day0.provider.cost_usd == Decimal("0.0120")  # a tool line counts toward the bill
    assert day0.measure == "cost_usd" and day0.difference_pct == Decimal("25.00000")
    assert day1.provider.cost_usd is None and day1.measure == "tokens"
    assert alerting(result.buckets, Decimal(10)) == [day0]
    assert alerting(result.buckets, Decimal(30)) == []


def test_held_keys_show_bypass_and_other_keys_apart() -> None:
    result = compare(
        "anthropic", "1d", D0, D1,
        [usage(D0, "claude-sonnet-4-20250514", "apikey_proxy", None, 5000, 900),
         usage(D0, "claude-sonnet-4-20250514", "apikey_laptop", None, 70, 7),
         usage(D0, "claude-sonnet-4-20250514", "apikey_else", None, 30, 3)],
        [],
        [cell(D0, "claude-sonnet-4-0", 3, 4000, 900, upstream=PROXY),
         cell(D0, "claude-sonnet-4-20250514", 1, 100, 10, upstream=OTHER)],
        held_keys={"apikey_proxy": PROXY},
        closed_before=D2,
    )  # fmt: skip
    by_key = {row.api_key_id: row for row in result.rows if row.model == "claude-sonnet-4"}
    held = by_key["apikey_proxy"]
    assert held.held and held.bypassed
    assert held.bypass is not None and held.bypass.input_tokens == 1000
    assert held.bypass.requests is None  # Anthropic's report has no request count
    assert held.bypass.output_tokens == 0
    others = by_key[OTHER_KEYS]
    assert not others.held and others.bypass is None
    assert others.provider.input_tokens == 100 and others.local.input_tokens == 100
    assert reconciliation_json(result)["bypass"] is True


def test_local_traffic_the_report_lacks_and_unpriced_records_are_flagged() -> None:
    result = compare(
        "openai", "1d", D0, D1, [],
        [], [cell(D0, "gpt-4o", 3, 300, 30, "0", unpriced=3)], closed_before=D2,
    )  # fmt: skip
    (row,) = result.rows
    assert not row.seen_by_provider and row.local.cost_usd is None  # all unpriced: unknown
    assert row.differences["input_tokens"].relative is None  # provider 0: no share of it
    table = render_table(result)
    assert "unpriced:3" in table and "not in report" in table
    assert render_csv(result).splitlines()[1].startswith("2026-11-01T00:00:00Z,gpt-4o,")
    body = reconciliation_json(result)
    assert body["data"][0]["tallyproxy"]["cost_usd"] is None
    assert body["buckets"][0]["final"] is True


def test_rows_outside_the_range_are_left_out() -> None:
    result = compare(
        "openai", "1d", D1, D2,
        [usage(D0, "gpt-4o", "k", 1, 1, 1), usage(D1, "gpt-4o", "k", 1, 1, 1)],
        [], [cell(D2, "gpt-4o", 1, 1, 1)], closed_before=D2,
    )  # fmt: skip
    assert [row.start for row in result.rows] == [D1]


@pytest.mark.parametrize(
    ("since", "until", "width", "expected"),
    [
        (D0 + timedelta(hours=5), D1 + timedelta(hours=1), "1d", (D0, D2)),
        (D0, D1, "1d", (D0, D1)),
        (D0 + timedelta(minutes=5), D0 + timedelta(hours=2), "1h",
         (D0, D0 + timedelta(hours=2))),
    ],
)  # fmt: skip
def test_aligned(
    since: datetime, until: datetime, width: str, expected: tuple[datetime, datetime]
) -> None:
    assert aligned(since, until, width) == expected  # type: ignore[arg-type]
