"""The pure parts of ``tallyproxy report``: tables, CSV, JSON and the day-over-day change."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from proxy.commands.report import (
    DayChange,
    day_over_day,
    format_percent,
    percent_change,
    render_daily,
    render_summary,
    render_table,
    totals,
)


def row(
    key: Any, requests: int, prompt: int, completion: int, cost: str | None, unpriced: int = 0
) -> dict[str, Any]:
    return {
        "key": key,
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": None if cost is None else Decimal(cost),
        "unpriced_requests": unpriced,
    }


ROWS = [
    row("gpt-4o", 1200, 1_500_000, 250_000, "6.25"),
    row("o3-mini", 3, 30, 12, "0.0000125"),
    row(None, 2, 0, 0, None, unpriced=2),
]


@pytest.mark.parametrize(
    ("current", "previous", "expected"),
    [
        (110, 100, Decimal("10.0")),
        (90, 100, Decimal("-10.0")),
        (100, 100, Decimal("0.0")),
        (1, 3, Decimal("-66.7")),
        (2, 3, Decimal("-33.3")),
        (5, 0, None),  # no base: not "infinitely more"
        (0, 0, None),
        (Decimal("0.3"), Decimal("0.2"), Decimal("50.0")),
        (None, Decimal("1"), None),  # unknown cost
        (Decimal("1"), None, None),
        (0, 4, Decimal("-100.0")),
    ],
)
def test_percent_change(current: Any, previous: Any, expected: Decimal | None) -> None:
    assert percent_change(current, previous) == expected


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (Decimal("10.0"), "+10.0%"),
        (Decimal("-3.5"), "-3.5%"),
        (Decimal("0.0"), "0.0%"),
        (None, "n/a"),
    ],
)
def test_format_percent(change: Decimal | None, text: str) -> None:
    assert format_percent(change) == text


def test_totals_skip_unknown_costs() -> None:
    assert totals(ROWS) == {
        "requests": 1205,
        "prompt_tokens": 1_500_030,
        "completion_tokens": 250_012,
        "total_tokens": 1_750_042,
        "cost_usd": Decimal("6.2500125"),
        "unpriced_requests": 2,
    }
    assert totals([row("x", 1, 1, 1, None)])["cost_usd"] is None
    assert totals([])["requests"] == 0


def test_render_table_aligns_columns() -> None:
    text = render_table(["name", "n"], [["a", "1"], ["long name", "1,000"]], ["total", "1,001"])
    assert text.splitlines() == [
        "name           n",
        "---------  -----",
        "a              1",
        "long name  1,000",
        "---------  -----",
        "total      1,001",
    ]


def test_summary_table() -> None:
    assert render_summary("model", ROWS, "table").splitlines() == [
        "model    requests     prompt  completion  total tokens   cost USD  unpriced",
        "-------  --------  ---------  ----------  ------------  ---------  --------",
        "gpt-4o      1,200  1,500,000     250,000     1,750,000       6.25         0",
        "o3-mini         3         30          12            42  0.0000125         0",
        "(none)          2          0           0             0    unknown         2",
        "-------  --------  ---------  ----------  ------------  ---------  --------",
        "total       1,205  1,500,030     250,012     1,750,042  6.2500125         2",
    ]


def test_summary_csv() -> None:
    assert render_summary("user", ROWS, "csv").splitlines() == [
        "user,requests,prompt_tokens,completion_tokens,total_tokens,cost_usd,unpriced_requests",
        "gpt-4o,1200,1500000,250000,1750000,6.25,0",
        "o3-mini,3,30,12,42,0.0000125,0",
        ",2,0,0,0,,2",
    ]


def test_summary_json() -> None:
    body = json.loads(render_summary("session", ROWS, "json"))
    assert body["by"] == "session"
    assert body["data"][1] == {
        "key": "o3-mini",
        "requests": 3,
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "total_tokens": 42,
        "cost_usd": "0.0000125",
        "unpriced_requests": 0,
    }
    assert body["data"][2]["key"] is None and body["data"][2]["cost_usd"] is None
    assert body["totals"]["cost_usd"] == "6.2500125"
    assert body["totals"]["requests"] == 1205


def day_row(day: str, requests: int, tokens: int, cost: str | None) -> dict[str, Any]:
    return {"key": day, "requests": requests, "total_tokens": tokens,
            "cost_usd": None if cost is None else Decimal(cost)}  # fmt: skip


DAYS = [date(2026, 3, d) for d in (1, 2, 3, 4)]
DAY_ROWS = [
    day_row("2026-02-28", 10, 1000, "1"),  # the base of the first day's change
    day_row("2026-03-01", 20, 1500, "1.5"),
    # 2026-03-02: nothing at all
    day_row("2026-03-03", 5, 500, None),  # only unpriced requests
    day_row("2026-03-04", 10, 500, "0.25"),
]


def test_day_over_day() -> None:
    assert day_over_day(DAY_ROWS, DAYS) == [
        DayChange(date(2026, 3, 1), 20, 1500, Decimal("1.5"),
                  Decimal("100.0"), Decimal("50.0"), Decimal("50.0")),
        DayChange(date(2026, 3, 2), 0, 0, None, Decimal("-100.0"), Decimal("-100.0"), None),
        DayChange(date(2026, 3, 3), 5, 500, None, None, None, None),
        DayChange(date(2026, 3, 4), 10, 500, Decimal("0.25"),
                  Decimal("100.0"), Decimal("0.0"), None),
    ]  # fmt: skip


def test_day_over_day_without_a_base_day() -> None:
    changes = day_over_day(DAY_ROWS[1:], DAYS[:1])
    assert changes[0].requests_change is None and changes[0].cost_change is None
    assert day_over_day([], []) == []


def test_daily_table() -> None:
    assert render_daily(day_over_day(DAY_ROWS, DAYS), "table").splitlines() == [
        "day         requests   change  total tokens   change  cost USD  change",
        "----------  --------  -------  ------------  -------  --------  ------",
        "2026-03-01        20  +100.0%         1,500   +50.0%       1.5  +50.0%",
        "2026-03-02         0  -100.0%             0  -100.0%   unknown     n/a",
        "2026-03-03         5      n/a           500      n/a   unknown     n/a",
        "2026-03-04        10  +100.0%           500     0.0%      0.25     n/a",
        "----------  --------  -------  ------------  -------  --------  ------",
        "total             35                  2,500               1.75",
    ]


def test_daily_csv_and_json() -> None:
    changes = day_over_day(DAY_ROWS, DAYS)
    assert render_daily(changes, "csv").splitlines()[:3] == [
        "day,requests,requests_change_pct,total_tokens,tokens_change_pct,cost_usd,cost_change_pct",
        "2026-03-01,20,100,1500,50,1.5,50",
        "2026-03-02,0,-100,0,-100,,",
    ]
    days = json.loads(render_daily(changes, "json"))["days"]
    assert days[0] == {
        "day": "2026-03-01",
        "requests": 20,
        "requests_change_pct": "100",
        "total_tokens": 1500,
        "tokens_change_pct": "50",
        "cost_usd": "1.5",
        "cost_change_pct": "50",
    }
    assert days[2]["requests_change_pct"] is None
