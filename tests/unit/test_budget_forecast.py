"""When a budget runs out at its pace (``proxy.spend.forecast``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from proxy.spend.forecast import Burn, runs_out_at, within

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 12, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    ("limit_usd", "used_usd", "limit_tokens", "used_tokens", "burn", "hours"),
    [
        # $10 left at $2 an hour: 5 hours.
        ("20", "10", None, 0, Burn(usd_1h=Decimal(2), usd_24h=Decimal(24)), 5),
        # Nothing in the last hour: the day's pace ($24 a day = $1 an hour).
        ("20", "10", None, 0, Burn(usd_24h=Decimal(24)), 10),
        # Resets (at midnight, 12 hours away) before it runs out.
        ("20", "10", None, 0, Burn(usd_1h=Decimal("0.5")), None),
        # Nothing spent: never.
        ("20", "10", None, 0, Burn(), None),
        # Already used up: now.
        ("20", "20", None, 0, Burn(usd_1h=Decimal(1)), 0),
        # Tokens: 3,000 left at 1,000 an hour.
        (None, "0", 10_000, 7_000, Burn(tokens_1h=1000), 3),
        # Both limits: whichever runs out first (tokens in 2 h, money in 6 h).
        ("20", "14", 10_000, 8_000, Burn(usd_1h=Decimal(1), tokens_1h=1000), 2),
    ],
)
def test_runs_out_at(
    limit_usd: str | None,
    used_usd: str,
    limit_tokens: int | None,
    used_tokens: int,
    burn: Burn,
    hours: float | None,
) -> None:
    when = runs_out_at(
        now=NOW,
        resets_at=MIDNIGHT,
        limit_usd=None if limit_usd is None else Decimal(limit_usd),
        used_usd=Decimal(used_usd),
        limit_tokens=limit_tokens,
        used_tokens=used_tokens,
        burn=burn,
    )
    assert when == (None if hours is None else NOW + timedelta(hours=hours))


def test_a_total_budget_never_resets() -> None:
    when = runs_out_at(
        now=NOW,
        resets_at=None,
        limit_usd=Decimal(100),
        used_usd=Decimal(0),
        limit_tokens=None,
        used_tokens=0,
        burn=Burn(usd_1h=Decimal(1)),
    )
    assert when == NOW + timedelta(hours=100)


@pytest.mark.parametrize(
    ("hours_away", "horizon", "expected"),
    [(3, 4.0, True), (5, 4.0, False), (4, 4.0, True), (None, 4.0, False), (1, None, False)],
)
def test_within(hours_away: float | None, horizon: float | None, expected: bool) -> None:
    when = None if hours_away is None else NOW + timedelta(hours=hours_away)
    assert within(when, NOW, horizon) is expected
