"""Rows from the store -> JSON-ready dicts of the public contract.

Times are ISO-8601 in UTC with a ``Z``; money is a decimal string without exponent (or null
when unknown), never a float, so clients can sum it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from proxy.money import money
from proxy.store.tables import TOKEN_FIELDS
from proxy.timestamps import iso_utc

RECORD_FIELDS: Final = (
    "id",
    "created_at",
    "endpoint",
    "method",
    "status_code",
    "stream",
    "model",
    "response_model",
    "upstream",
    "session_id",
    "user_id",
    "properties",
    *TOKEN_FIELDS,
    "usage_source",
    "usage_repaired",
    "cost_usd",
    "price_source",
    "price_version",
    "estimated_prompt_tokens",
    "estimated_completion_tokens",
    "estimate_excludes",
    "latency_ms",
    "ttft_ms",
    "error",
    "key_id",
    "session_path",
    "session_name",
    "trace_id",
    "span_id",
    "downgraded_from",
    "tool_calls",
    "tool_results",
)

SESSION_FIELDS: Final = (
    "session_id",
    "user_id",
    "requests",
    *TOKEN_FIELDS,
    "cost_usd",
    "unpriced_requests",
    "first_request_at",
    "last_request_at",
    "name",
    "errors",
    "latency_ms",
    "tool_calls",
)

SUMMARY_FIELDS: Final = (
    "key",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_requests",
    "tool_calls",
    "errors",
)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, Decimal):
        return money(value)
    return value


def record_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One request record with every contract field."""
    return {name: _plain(row.get(name)) for name in RECORD_FIELDS}


def session_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One session summary with every contract field and its ``models`` breakdown."""
    result = {name: _plain(row.get(name)) for name in SESSION_FIELDS}
    models: Mapping[str, Mapping[str, Any]] = row.get("models") or {}
    result["models"] = {
        model: {
            "requests": totals["requests"],
            "total_tokens": totals["total_tokens"],
            "cost_usd": money(totals["cost_usd"]),
        }
        for model, totals in models.items()
    }
    requests = result["requests"] or 0
    result["error_rate"] = (result["errors"] or 0) / requests if requests else 0.0
    tree = row.get("tree")
    if tree is not None:
        result["tree"] = _tree_json(tree)
    return result


def _tree_json(node: Mapping[str, Any]) -> dict[str, Any]:
    """One path node and its children: own and rolled-up totals, money as strings."""
    return {
        "path": node["path"],
        "own": {name: _plain(value) for name, value in node["own"].items()},
        "total": {name: _plain(value) for name, value in node["total"].items()},
        "children": [_tree_json(child) for child in node["children"]],
    }


def summary_row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One group of a usage summary, with the share of its requests that failed."""
    # Only the key (a time bucket) and the cost need converting; the rest are plain counts.
    # A summary by user is a thousand of these, so the plain fields are copied as they are.
    result = {name: row.get(name) for name in SUMMARY_FIELDS}
    result["key"] = _plain(result["key"])
    result["cost_usd"] = money(result["cost_usd"])
    requests = result["requests"] or 0
    result["error_rate"] = (result["errors"] or 0) / requests if requests else 0.0
    return result


def stats_json(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Writer statistics for /readyz."""
    return {name: _plain(value) for name, value in stats.items()}
