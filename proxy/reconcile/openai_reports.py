"""OpenAI's Usage API and Costs API: the calls, and their pages as ``UsageRow``/``CostRow``.

Usage (``GET /v1/organization/usage/{completions,embeddings,moderations}``) comes in buckets
of ``bucket_width`` (``1d``, ``1h``), one result per group (``group_by`` model, project,
API key); ``input_tokens`` includes ``input_cached_tokens``. Costs (``GET
/v1/organization/costs``) come per day only, grouped by project and line item, whose text
("gpt-4o-2024-08-06, input") names the model for token lines.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from proxy.reconcile.fields import (
    count,
    decimal,
    items,
    mapping,
    next_cursor,
    text,
    unix_time,
)
from proxy.reconcile.reports import BucketWidth, CostRow, Page, PageShapeError, UsageRow

USAGE_ENDPOINTS: Final = ("completions", "embeddings", "moderations")
"""The usage reports that count tokens; images, audio and tools are billed otherwise."""

USAGE_PATH: Final = "/v1/organization/usage/{endpoint}"
COSTS_PATH: Final = "/v1/organization/costs"
MAX_BUCKETS: Final = {"1d": 31, "1h": 168}
"""The most buckets a usage page may hold, per bucket width (the API's ``limit`` bound)."""
COST_BUCKETS: Final = 180


def usage_params(
    since: datetime, until: datetime, width: BucketWidth, page: str | None
) -> list[tuple[str, str]]:
    """The query of one usage page: the range, the width, and every grouping the report has."""
    params = [
        ("start_time", str(int(since.timestamp()))),
        ("end_time", str(int(until.timestamp()))),
        ("bucket_width", width),
        ("limit", str(MAX_BUCKETS[width])),
        *(("group_by", name) for name in ("model", "project_id", "api_key_id")),
    ]
    return [*params, ("page", page)] if page else params


def costs_params(since: datetime, until: datetime, page: str | None) -> list[tuple[str, str]]:
    """The query of one costs page: days only, by project and line item."""
    params = [
        ("start_time", str(int(since.timestamp()))),
        ("end_time", str(int(until.timestamp()))),
        ("bucket_width", "1d"),
        ("limit", str(COST_BUCKETS)),
        ("group_by", "project_id"),
        ("group_by", "line_item"),
    ]
    return [*params, ("page", page)] if page else params


def usage_page(body: Any) -> Page:
    """A usage page's rows (any of the token-counting endpoints) and its next cursor."""
    page = _page(body)
    rows: list[UsageRow] = []
    for i, bucket in enumerate(items(page.get("data"), "data")):
        where = f"data[{i}]"
        node = mapping(bucket, where)
        start, end = unix_time(node, "start_time", where), unix_time(node, "end_time", where)
        for j, result in enumerate(items(node.get("results"), f"{where}.results")):
            rows.append(_usage_row(start, end, mapping(result, f"{where}.results[{j}]"), where))
    return Page(tuple(rows), (), next_cursor(page, "page"))


def _usage_row(start: datetime, end: datetime, result: dict[str, Any], where: str) -> UsageRow:
    return UsageRow(
        start=start,
        end=end,
        model=text(result, "model", where),
        project_id=text(result, "project_id", where),
        api_key_id=text(result, "api_key_id", where),
        requests=count(result, "num_model_requests", where),
        input_tokens=count(result, "input_tokens", where),
        cached_input_tokens=count(result, "input_cached_tokens", where, default=0),
        output_tokens=count(result, "output_tokens", where, default=0),
    )


def costs_page(body: Any) -> Page:
    """A costs page's lines, in USD (a currency other than ``usd`` is refused)."""
    page = _page(body)
    rows: list[CostRow] = []
    for i, bucket in enumerate(items(page.get("data"), "data")):
        where = f"data[{i}]"
        node = mapping(bucket, where)
        start, end = unix_time(node, "start_time", where), unix_time(node, "end_time", where)
        for j, result in enumerate(items(node.get("results"), f"{where}.results")):
            line = mapping(result, f"{where}.results[{j}]")
            amount = mapping(line.get("amount"), f"{where}.results[{j}].amount")
            currency = amount.get("currency")
            if not isinstance(currency, str) or currency.lower() != "usd":
                raise PageShapeError(f"{where}.results[{j}].amount.currency: {currency!r}, not usd")
            rows.append(
                CostRow(
                    start=start,
                    end=end,
                    model=line_item_model(text(line, "line_item", where)),
                    project_id=text(line, "project_id", where),
                    amount_usd=decimal(amount.get("value"), f"{where}.results[{j}].amount.value"),
                )
            )
    return Page((), tuple(rows), next_cursor(page, "page"))


_TOKEN_LINES: Final = ("input", "output", "cached input", "cached_input")


def line_item_model(line_item: str | None) -> str | None:
    """The model a line item bills ("gpt-4o-2024-08-06, input"); None for others
    ("Assistants API | file search")."""
    if line_item is None:
        return None
    model, comma, kind = line_item.rpartition(", ")
    if comma and kind.strip().lower() in _TOKEN_LINES and " " not in model.strip():
        return model.strip()
    if " " not in line_item.strip():
        return line_item.strip()  # embeddings lines name just the model
    return None


def _page(body: Any) -> dict[str, Any]:
    page = mapping(body, "page")
    if page.get("object") != "page":
        raise PageShapeError(f"page.object: expected 'page', got {page.get('object')!r}")
    return page
