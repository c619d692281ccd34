"""A budget and its current period as the API, the CLI and alerts show it, pure."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from proxy.money import EXACT, money
from proxy.timestamps import iso_utc


def budget_json(row: dict[str, Any]) -> dict[str, Any]:
    """A budget and its current period as the API shows it."""
    remaining_usd: Decimal | None = None
    if row["limit_usd"] is not None:
        used = EXACT.add(row["spent_usd"], row["reserved_usd"])
        remaining_usd = max(Decimal(0), EXACT.subtract(row["limit_usd"], used))
    remaining_tokens: int | None = None
    if row["limit_tokens"] is not None:
        used_tokens = row["spent_tokens"] + row["reserved_tokens"]
        remaining_tokens = max(0, row["limit_tokens"] - used_tokens)
    return {
        "id": row["id"],
        "name": row["name"],
        "scope": row["scope"],
        "subject": row["subject"],
        "period": row["period"],
        "limit_usd": money(row["limit_usd"]),
        "limit_tokens": row["limit_tokens"],
        "alerts": list(row["alerts"] or []),
        "period_start": iso_utc(row["period_start"]),
        "resets_at": iso_utc(row["resets_at"]),
        "spent_usd": money(row["spent_usd"]),
        "spent_tokens": row["spent_tokens"],
        "reserved_usd": money(row["reserved_usd"]),
        "reserved_tokens": row["reserved_tokens"],
        "remaining_usd": money(remaining_usd),
        "remaining_tokens": remaining_tokens,
    }
