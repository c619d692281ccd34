"""Budget periods, pure: when the period holding a moment starts, and when it resets (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

Period = Literal["hour", "day", "month", "total"]
PERIODS: tuple[Period, ...] = ("hour", "day", "month", "total")
TOTAL_START = datetime(1970, 1, 1, tzinfo=UTC)
"""The one period of a ``total`` budget, which never resets."""


def period_start(period: Period, at: datetime) -> datetime:
    """The start of the period holding ``at``."""
    at = at.astimezone(UTC)
    if period == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    if period == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return TOTAL_START


def period_end(period: Period, start: datetime) -> datetime | None:
    """When the period starting at ``start`` resets; None for ``total``."""
    if period == "hour":
        return start + timedelta(hours=1)
    if period == "day":
        return start + timedelta(days=1)
    if period == "month":
        year, month = divmod(start.month, 12)
        return start.replace(year=start.year + year, month=month + 1)
    return None
