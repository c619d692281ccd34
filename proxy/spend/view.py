"""A budget and its current period as the API, the CLI and alerts show it, pure."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from proxy.money import EXACT, money
from proxy.spend.forecast import NO_BURN, Burn, hourly, runs_out_at
from proxy.timestamps import iso_utc


def budget_json(row: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A budget and its current period as the API shows it, with its burn rate and when it
    runs out at that pace (``proxy.spend.forecast``)."""
    now = now or datetime.now(UTC)
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
        "actions": list(row.get("actions") or []),
        "period_start": iso_utc(row["period_start"]),
        "resets_at": iso_utc(row["resets_at"]),
        "spent_usd": money(row["spent_usd"]),
        "spent_tokens": row["spent_tokens"],
        "reserved_usd": money(row["reserved_usd"]),
        "reserved_tokens": row["reserved_tokens"],
        "remaining_usd": money(remaining_usd),
        "remaining_tokens": remaining_tokens,
        **forecast_json(row, now),
    }


def forecast(row: dict[str, Any], now: datetime) -> datetime | None:
    """When the budget of a status row runs out at its current pace."""
    return runs_out_at(
        now=now,
        resets_at=row["resets_at"],
        limit_usd=row["limit_usd"],
        used_usd=EXACT.add(row["spent_usd"], row["reserved_usd"]),
        limit_tokens=row["limit_tokens"],
        used_tokens=row["spent_tokens"] + row["reserved_tokens"],
        burn=row.get("burn", NO_BURN),
    )


def forecast_json(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    burn: Burn = row.get("burn", NO_BURN)
    usd_1h, usd_24h = hourly(burn.usd_1h, burn.usd_24h)
    return {
        "burn": {
            "last_hour": {"usd_per_hour": money(usd_1h), "tokens_per_hour": burn.tokens_1h},
            "last_day": {
                "usd_per_hour": money(usd_24h.quantize(_PICO, context=EXACT)),
                "tokens_per_hour": round(burn.tokens_24h / 24, 1),
            },
        },
        "runs_out_at": iso_utc(forecast(row, now)),
    }


_PICO = Decimal("0.000000000001")
