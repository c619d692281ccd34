"""What a daily digest says, computed from plain figures: totals, changes, drivers, budgets.

Pure functions over values read elsewhere (``proxy.store.digests``): the same figures give
the same digest, whichever way it is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)
DIMENSIONS = ("model", "user", "property")
"""The breakdowns a digest names drivers for, in the order it shows them."""


@dataclass(frozen=True, slots=True)
class Totals:
    """Requests, total tokens, known cost and requests without a price, of some slice."""

    requests: int = 0
    tokens: int = 0
    cost_usd: Decimal = ZERO
    unpriced_requests: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.tokens + other.tokens,
            self.cost_usd + other.cost_usd,
            self.unpriced_requests + other.unpriced_requests,
        )


@dataclass(frozen=True, slots=True)
class Driver:
    """One model, user or property value: its totals on the day and on the day before."""

    key: str
    day: Totals
    before: Totals

    @property
    def tokens_delta(self) -> int:
        return self.day.tokens - self.before.tokens

    @property
    def cost_delta(self) -> Decimal:
        return self.day.cost_usd - self.before.cost_usd


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """A budget at or past the digest's warning share of its limit."""

    name: str
    percent: Decimal
    spent: Decimal
    limit: Decimal
    unit: str  # "usd" | "tokens"
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class Digest:
    day: date
    totals: Totals
    day_before: Totals
    week_before: Totals
    last_days: tuple[tuple[date, Totals], ...]
    """The seven days ending with ``day``, oldest first: the chart."""
    drivers: dict[str, tuple[Driver, ...]] = field(default_factory=dict)
    budgets: tuple[BudgetLine, ...] = ()
    anomalies: tuple[dict[str, Any], ...] = ()
    rollups_complete: bool = True

    @property
    def day_change(self) -> dict[str, Decimal | None]:
        return changes(self.totals, self.day_before)

    @property
    def week_change(self) -> dict[str, Decimal | None]:
        return changes(self.totals, self.week_before)


def change(now: Decimal | int, before: Decimal | int) -> Decimal | None:
    """The change from ``before`` to ``now`` in percent, one decimal; None from zero to more."""
    if before == 0:
        return Decimal("0.0") if now == 0 else None
    return ((Decimal(now) - Decimal(before)) * 100 / Decimal(before)).quantize(Decimal("0.1"))


def changes(now: Totals, before: Totals) -> dict[str, Decimal | None]:
    return {
        "requests": change(now.requests, before.requests),
        "tokens": change(now.tokens, before.tokens),
        "cost_usd": change(now.cost_usd, before.cost_usd),
    }


def top_drivers(
    day: Mapping[str, Totals], before: Mapping[str, Totals], top: int
) -> tuple[Driver, ...]:
    """The ``top`` keys whose cost, then tokens, moved most (up or down) between the days."""
    drivers = [
        Driver(key, day.get(key, Totals()), before.get(key, Totals()))
        for key in set(day) | set(before)
    ]
    drivers = [d for d in drivers if d.cost_delta or d.tokens_delta]
    drivers.sort(key=lambda d: (-abs(d.cost_delta), -abs(d.tokens_delta), d.key))
    return tuple(drivers[:top])


def near_limit(statuses: Iterable[Mapping[str, Any]], percent: int) -> tuple[BudgetLine, ...]:
    """The budgets (``BudgetStore.status`` rows) whose spend is at ``percent`` of a limit or
    more, fullest first."""
    lines = []
    for status in statuses:
        for unit, spent, limit in (
            ("usd", status["spent_usd"], status["limit_usd"]),
            ("tokens", status["spent_tokens"], status["limit_tokens"]),
        ):
            if limit is None or limit <= 0:
                continue
            share = (Decimal(spent) * 100 / Decimal(limit)).quantize(Decimal("0.1"))
            if share >= percent:
                lines.append(
                    BudgetLine(
                        status["name"],
                        share,
                        Decimal(spent),
                        Decimal(limit),
                        unit,
                        status.get("resets_at"),
                    )
                )
    lines.sort(key=lambda line: (-line.percent, line.name))
    return tuple(lines)


def build_digest(
    day: date,
    daily: Mapping[date, Totals],
    breakdowns: Mapping[str, tuple[Mapping[str, Totals], Mapping[str, Totals]]],
    *,
    top: int = 5,
    budgets: Sequence[BudgetLine] = (),
    anomalies: Sequence[dict[str, Any]] = (),
    rollups_complete: bool = True,
) -> Digest:
    """The digest of ``day`` from per-day totals (``day`` and the 7 days before it) and, per
    dimension of ``DIMENSIONS``, the totals by key on ``day`` and on the day before."""
    week = tuple(
        (d, daily.get(d, Totals())) for d in (day - timedelta(days=n) for n in range(6, -1, -1))
    )
    return Digest(
        day=day,
        totals=daily.get(day, Totals()),
        day_before=daily.get(day - timedelta(days=1), Totals()),
        week_before=daily.get(day - timedelta(days=7), Totals()),
        last_days=week,
        drivers={
            name: top_drivers(*breakdowns[name], top) for name in DIMENSIONS if name in breakdowns
        },
        budgets=tuple(budgets),
        anomalies=tuple(anomalies),
        rollups_complete=rollups_complete,
    )
