"""Anthropic's Admin API usage report and cost report: the calls, and their pages as rows.

The usage report (``GET /v1/organizations/usage_report/messages``) splits input into
uncached, cache read and cache creation (5 minute and 1 hour) tokens and has no request
count. The cost report (``GET /v1/organizations/cost_report``) is per day, its ``amount`` a
decimal string in cents; grouped by ``description`` its lines name the model.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from proxy.reconcile.fields import count, decimal, items, mapping, next_cursor, rfc3339, text
from proxy.reconcile.reports import BucketWidth, CostRow, Page, PageShapeError, UsageRow

USAGE_PATH: Final = "/v1/organizations/usage_report/messages"
COSTS_PATH: Final = "/v1/organizations/cost_report"
API_VERSION: Final = "2023-06-01"
MAX_BUCKETS: Final = {"1d": 31, "1h": 168}
COST_BUCKETS: Final = 31
_CENTS = Decimal(100)


def usage_params(
    since: datetime, until: datetime, width: BucketWidth, page: str | None
) -> list[tuple[str, str]]:
    params = [
        ("starting_at", _rfc3339(since)),
        ("ending_at", _rfc3339(until)),
        ("bucket_width", width),
        ("limit", str(MAX_BUCKETS[width])),
        *(("group_by[]", name) for name in ("model", "workspace_id", "api_key_id")),
    ]
    return [*params, ("page", page)] if page else params


def costs_params(since: datetime, until: datetime, page: str | None) -> list[tuple[str, str]]:
    params = [
        ("starting_at", _rfc3339(since)),
        ("ending_at", _rfc3339(until)),
        ("bucket_width", "1d"),
        ("limit", str(COST_BUCKETS)),
        ("group_by[]", "workspace_id"),
        ("group_by[]", "description"),
    ]
    return [*params, ("page", page)] if page else params


def usage_page(body: Any) -> Page:
    """A usage report page's rows and its next cursor."""
    page = mapping(body, "page")
    rows: list[UsageRow] = []
    for i, bucket in enumerate(items(page.get("data"), "data")):
        where = f"data[{i}]"
        node = mapping(bucket, where)
        start, end = rfc3339(node, "starting_at", where), rfc3339(node, "ending_at", where)
        for j, result in enumerate(items(node.get("results"), f"{where}.results")):
            rows.append(_usage_row(start, end, mapping(result, f"{where}.results[{j}]"), where))
    return Page(tuple(rows), (), next_cursor(page, "page"))


def _usage_row(start: datetime, end: datetime, result: dict[str, Any], where: str) -> UsageRow:
    creation = result.get("cache_creation") or {}
    creation = mapping(creation, f"{where}.cache_creation")
    written = count(creation, "ephemeral_5m_input_tokens", where, default=0) + count(
        creation, "ephemeral_1h_input_tokens", where, default=0
    )
    read = count(result, "cache_read_input_tokens", where, default=0)
    return UsageRow(
        start=start,
        end=end,
        model=text(result, "model", where),
        project_id=text(result, "workspace_id", where),
        api_key_id=text(result, "api_key_id", where),
        requests=None,
        input_tokens=count(result, "uncached_input_tokens", where) + read + written,
        cached_input_tokens=read,
        output_tokens=count(result, "output_tokens", where),
    )


def costs_page(body: Any) -> Page:
    """A cost report page's lines, converted from cents to USD."""
    page = mapping(body, "page")
    rows: list[CostRow] = []
    for i, bucket in enumerate(items(page.get("data"), "data")):
        where = f"data[{i}]"
        node = mapping(bucket, where)
        start, end = rfc3339(node, "starting_at", where), rfc3339(node, "ending_at", where)
        for j, result in enumerate(items(node.get("results"), f"{where}.results")):
            line = mapping(result, f"{where}.results[{j}]")
            currency = line.get("currency")
            if currency != "USD":
                raise PageShapeError(f"{where}.results[{j}].currency: {currency!r}, not USD")
            cents = decimal(line.get("amount"), f"{where}.results[{j}].amount")
            rows.append(
                CostRow(
                    start=start,
                    end=end,
                    model=text(line, "model", where),
                    project_id=text(line, "workspace_id", where),
                    amount_usd=cents / _CENTS,
                )
            )
    return Page((), tuple(rows), next_cursor(page, "page"))


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
