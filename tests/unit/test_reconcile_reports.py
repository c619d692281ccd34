"""Report pages (written from the providers' docs) -> usage rows and cost lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.reconcile import anthropic_reports, openai_reports
from proxy.reconcile.reports import Page, PageShapeError, UsageRow

PAYLOADS = Path(__file__).parents[1] / "payloads" / "reconcile"
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
NOV_2 = datetime(2026, 11, 2, tzinfo=UTC)


def load(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


@pytest.mark.parametrize(
    ("parse", "name", "rows", "first", "cursor"),
    [
        (
            openai_reports.usage_page,
            "openai_usage_completions_page1.json",
            3,
            UsageRow(NOV_1, NOV_2, "gpt-4o-mini-2024-07-18", "proj_tally", "key_proxy",
                     310, 120500, 20000, 30120),
            "page_AAAAAGdGxdEiJdKOAAAAAGcqsYA=",
        ),
        (
            openai_reports.usage_page,
            "openai_usage_completions_page2.json",
            1,
            None,
            None,
        ),
        (
            openai_reports.usage_page,
            "openai_usage_embeddings.json",
            1,
            UsageRow(NOV_1, NOV_2, "text-embedding-3-small", "proj_tally", "key_proxy",
                     80, 16000, 0, 0),
            None,
        ),
        (
            anthropic_reports.usage_page,
            "anthropic_usage_messages_page1.json",
            2,
            # uncached 40,000 + cache read 120,000 + cache writes 8,000; no request count
            UsageRow(NOV_1, NOV_2, "claude-sonnet-4-20250514", "wrkspc_tally", "apikey_proxy",
                     None, 168000, 120000, 15500),
            "page_MjAyNi0xMS0wM1QwMDowMDowMFo=",
        ),
        (
            anthropic_reports.usage_page,
            "anthropic_usage_messages_page2.json",
            1,
            None,
            None,
        ),
    ],
)  # fmt: skip
def test_usage_pages(
    parse: Any, name: str, rows: int, first: UsageRow | None, cursor: str | None
) -> None:
    page: Page = parse(load(name))
    assert len(page.usage) == rows
    if first is not None:
        assert page.usage[0] == first
    assert page.next_page == cursor


@pytest.mark.parametrize(
    ("parse", "name", "total", "by_model"),
    [
        (
            openai_reports.costs_page,
            "openai_costs.json",
            Decimal("0.3119670"),
            {"gpt-4o-mini-2024-07-18": Decimal("0.0361470"), "gpt-4o-2024-08-06":
             Decimal("0.2255"), "text-embedding-3-small": Decimal("0.00032"),
             None: Decimal("0.05")},
        ),
        (
            anthropic_reports.costs_page,
            "anthropic_cost_report.json",
            Decimal("0.4441"),  # 44.41 cents: 40,000 uncached Sonnet 4 input tokens are 12 cents
            {"claude-sonnet-4-20250514": Decimal("0.4185"),
             "claude-3-5-haiku-20241022": Decimal("0.0156"), None: Decimal("0.01")},
        ),
    ],
)  # fmt: skip
def test_cost_pages(parse: Any, name: str, total: Decimal, by_model: dict[Any, Decimal]) -> None:
    page: Page = parse(load(name))
    assert sum(line.amount_usd for line in page.costs) == total
    sums: dict[Any, Decimal] = {}
    for line in page.costs:
        assert line.start == NOV_1  # the second day's bucket is empty
        sums[line.model] = sums.get(line.model, Decimal(0)) + line.amount_usd
    assert sums == by_model


@pytest.mark.parametrize(
    ("line_item", "model"),
    [
        ("gpt-4o-2024-08-06, input", "gpt-4o-2024-08-06"),
        ("gpt-4o-mini-2024-07-18, cached input", "gpt-4o-mini-2024-07-18"),
        ("text-embedding-3-small", "text-embedding-3-small"),
        ("Assistants API | file search", None),
        ("Web search tool calls", None),
        (None, None),
    ],
)
def test_line_item_models(line_item: str | None, model: str | None) -> None:
    assert openai_reports.line_item_model(line_item) == model


def _broken(path: tuple[Any, ...], value: Any, name: str) -> Any:
    body = load(name)
    node = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("parse", "body", "names"),
    [
        (openai_reports.usage_page, {"error": {"message": "nope"}}, "page.object"),
        (openai_reports.usage_page, _broken(("data", 0, "results", 0, "input_tokens"), "12",
                                            "openai_usage_completions_page1.json"), "input_tokens"),
        (openai_reports.usage_page, _broken(("has_more",), None,
                                            "openai_usage_completions_page2.json"), "has_more"),
        (openai_reports.usage_page, _broken(("next_page",), None,
                                            "openai_usage_completions_page1.json"), "next_page"),
        (openai_reports.costs_page, _broken(("data", 0, "results", 0, "amount", "currency"),
                                            "eur", "openai_costs.json"), "currency"),
        (anthropic_reports.usage_page, _broken(("data", 0, "starting_at"), "yesterday",
                                               "anthropic_usage_messages_page1.json"),
         "starting_at"),
        (anthropic_reports.usage_page,
         _broken(("data",), {}, "anthropic_usage_messages_page2.json"), "data"),
        (anthropic_reports.costs_page, _broken(("data", 0, "results", 0, "amount"), "lots",
                                               "anthropic_cost_report.json"), "amount"),
    ],
)  # fmt: skip
def test_malformed_pages_name_the_field(parse: Any, body: Any, names: str) -> None:
    with pytest.raises(PageShapeError, match=names):
        parse(body)


def test_query_asks_for_every_grouping_and_the_cursor() -> None:
    params = openai_reports.usage_params(NOV_1, NOV_2, "1h", "cur")
    assert ("group_by", "api_key_id") in params and ("bucket_width", "1h") in params
    assert ("limit", "168") in params and params[-1] == ("page", "cur")
    assert ("start_time", str(int(NOV_1.timestamp()))) in params
    params = anthropic_reports.usage_params(NOV_1, NOV_2, "1d", None)
    assert ("starting_at", "2026-11-01T00:00:00Z") in params
    assert ("group_by[]", "workspace_id") in params and ("page", "cur") not in params
