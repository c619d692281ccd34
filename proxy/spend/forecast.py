"""When a budget runs out at the pace it is spent, pure.

The burn rate is what stored records spent in the last hour and the last day (per hour).
The projection divides what remains of the limit (after spent and reserved) by the last
hour's rate, or by the day's when the last hour spent nothing; a budget limiting money and
tokens runs out at the earlier of the two. A budget that resets first does not run out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from proxy.money import EXACT

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Burn:
    """Spend of stored records over the last hour and the last 24 hours."""

    usd_1h: Decimal = ZERO
    tokens_1h: int = 0
    usd_24h: Decimal = ZERO
    tokens_24h: int = 0


NO_BURN = Burn()


def hourly(last_hour: Decimal, last_day: Decimal) -> tuple[Decimal, Decimal]:
    """(per hour over the last hour, per hour over the last day)."""
    return last_hour, EXACT.divide(last_day, Decimal(24))


def runs_out_at(
    *,
    now: datetime,
    resets_at: datetime | None,
    limit_usd: Decimal | None,
    used_usd: Decimal,
    limit_tokens: int | None,
    used_tokens: int,
    burn: Burn,
) -> datetime | None:
    """When the budget's limit is reached at the current pace; None when it never is
    before the period resets, or nothing is being spent."""
    candidates = []
    if limit_usd is not None:
        candidates.append(_hours_left(limit_usd - used_usd, burn.usd_1h, burn.usd_24h))
    if limit_tokens is not None:
        candidates.append(
            _hours_left(
                Decimal(limit_tokens - used_tokens),
                Decimal(burn.tokens_1h),
                Decimal(burn.tokens_24h),
            )
        )
    hours = min((h for h in candidates if h is not None), default=None)
    if hours is None:
        return None
    when = now + timedelta(hours=float(hours))
    return None if resets_at is not None and when >= resets_at else when


def _hours_left(remaining: Decimal, last_hour: Decimal, last_day: Decimal) -> Decimal | None:
    if remaining <= 0:
        return ZERO
    rate_1h, rate_24h = hourly(last_hour, last_day)
    rate = rate_1h if rate_1h > 0 else rate_24h
    if rate <= 0:
        return None
    return EXACT.divide(remaining, rate)


def within(when: datetime | None, now: datetime, hours: float | None) -> bool:
    """Whether a projected run-out falls inside the alert horizon."""
    return when is not None and hours is not None and when - now <= timedelta(hours=hours)
