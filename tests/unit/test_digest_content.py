"""The digest's content and renderings from plain figures (no database)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from proxy.digest import render
from proxy.digest.content import Totals, build_digest, change, near_limit, top_drivers
from proxy.digest.job import due_day

DAY = date(2026, 12, 2)


@pytest.mark.parametrize(
    ("now", "before", "expected"),
    [
        (112, 100, Decimal("12.0")),
        (50, 100, Decimal("-50.0")),
        (Decimal("0.3"), Decimal("0.2"), Decimal("50.0")),
        (1, 3, Decimal("-66.7")),
        (5, 0, None),  # from nothing: no percentage
        (0, 0, Decimal("0.0")),
    ],
)
def test_change(now: int, before: int, expected: Decimal | None) -> None:
    assert change(now, before) == expected


def test_drivers_are_the_largest_absolute_deltas_of_cost_then_tokens() -> None:
    day = {
        "gpt-4o": Totals(10, 1000, Decimal("1.00")),
        "gpt-4o-mini": Totals(50, 90000, Decimal("0.05")),
        "steady": Totals(5, 500, Decimal("0.10")),
        "local": Totals(9, 7000, Decimal(0), 9),
    }
    before = {
        "gpt-4o": Totals(1, 100, Decimal("0.10")),
        "steady": Totals(5, 500, Decimal("0.10")),
        "gone": Totals(3, 300, Decimal("-0")),
        "dropped": Totals(20, 2000, Decimal("2.00")),
    }
    keys = [d.key for d in top_drivers(day, before, 4)]
    # |-2.00| > |+0.90| > |+0.05|; then no cost change: 7000 tokens before 300
    assert keys == ["dropped", "gpt-4o", "gpt-4o-mini", "local"]
    assert "steady" not in [d.key for d in top_drivers(day, before, 10)]


def test_budgets_near_their_limit() -> None:
    statuses = [
        {"name": "team", "spent_usd": Decimal("8.5"), "limit_usd": Decimal(10),
         "spent_tokens": 0, "limit_tokens": None, "resets_at": None},
        {"name": "low", "spent_usd": Decimal("1"), "limit_usd": Decimal(10),
         "spent_tokens": 0, "limit_tokens": None, "resets_at": None},
        {"name": "tokens", "spent_usd": Decimal(0), "limit_usd": None,
         "spent_tokens": 1200, "limit_tokens": 1000, "resets_at": None},
    ]  # fmt: skip
    lines = near_limit(statuses, 80)
    assert [(b.name, b.percent, b.unit) for b in lines] == [
        ("tokens", Decimal("120.0"), "tokens"),
        ("team", Decimal("85.0"), "usd"),
    ]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 12, 3, 7, 59, tzinfo=UTC), None),
        (datetime(2026, 12, 3, 8, 0, tzinfo=UTC), date(2026, 12, 2)),
        (datetime(2026, 12, 3, 23, 0, tzinfo=UTC), date(2026, 12, 2)),
    ],
)
def test_due_day(now: datetime, expected: date | None) -> None:
    assert due_day(now, (8, 0)) == expected


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def test_renderings_carry_the_same_numbers() -> None:
    daily = {
        DAY: Totals(1248, 1_248_900, Decimal("12.50"), 3),
        DAY - timedelta(days=1): Totals(1100, 1_115_089, Decimal("10.00")),
        DAY - timedelta(days=7): Totals(1300, 1_300_000, Decimal("25.00")),
    }
    breakdowns = {
        "property": ({"app=support-chat": Totals(900, 900_000, Decimal("9"))},
                     {"app=support-chat": Totals(700, 700_000, Decimal("7"))}),
        "user": ({"<script>": Totals(1, 1, Decimal(0))}, {}),
    }  # fmt: skip
    digest = build_digest(DAY, daily, breakdowns)
    assert digest.day_change == {
        "requests": Decimal("13.5"), "tokens": Decimal("12.0"), "cost_usd": Decimal("25.0")
    }  # fmt: skip
    assert digest.week_change["cost_usd"] == Decimal("-50.0")
    assert [d for d, _ in digest.last_days] == [DAY - timedelta(days=n) for n in range(6, -1, -1)]

    text = render.text(digest)
    assert "1,248,900" in text and "+12.0% on the day before" in text
    assert "-50.0% on the week before" in text and "$12.50" in text
    assert "Unpriced requests: 3" in text
    assert "app=support-chat: 900,000 tokens (+200,000), $9.00 (+$2.00)" in text

    page = render.html(digest)
    assert "<script>" not in page and "&lt;script&gt;" in page
    # The chart's seven days hold two with tokens (the week before is the eighth day back).
    assert page.count('style="background:#4a7bd0') == 2
    parser = _Text()
    parser.feed(page)
    shown = " ".join(parser.parts)
    assert "1,248,900" in shown and "+12.0%" in shown and "-50.0%" in shown

    body = json.loads(render.webhook_body(digest))
    assert body["type"] == "digest.daily" and body["day"] == "2026-12-02"
    assert body["totals"] == {"requests": 1248, "total_tokens": 1248900, "cost_usd": "12.5",
                              "unpriced_requests": 3}  # fmt: skip
    assert body["change_percent"]["day"]["tokens"] == "12"
    assert body["drivers"]["property"][0]["tokens_delta"] == 200000
    assert (
        render.subject(digest)
        == "tallyproxy 2026-12-02: 1,248,900 tokens, $12.50, +12.0% on the day"
    )
