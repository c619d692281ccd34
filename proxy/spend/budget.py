"""Budgets, pure: what a budget is, which requests count against it, and amounts held on it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from proxy.money import EXACT, format_usd
from proxy.spend.actions import Action, parse_actions
from proxy.spend.periods import Period

Scope = Literal["key", "user", "session", "global"]
SCOPES: tuple[Scope, ...] = ("key", "user", "session", "global")

Slot = tuple[str, datetime]
"""A budget's period: (budget id, period start)."""

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    name: str
    scope: Scope
    subject: str | None
    period: Period
    limit_usd: Decimal | None
    limit_tokens: int | None
    alerts: tuple[int, ...]
    actions: tuple[Action, ...] = ()

    def applies(self, key_id: str | None, user_id: str | None, session_id: str | None) -> bool:
        """Whether a request with these tags counts against this budget."""
        if self.scope == "global":
            return True
        subject = {"key": key_id, "user": user_id, "session": session_id}[self.scope]
        return subject is not None and subject == self.subject

    def describe(self) -> str:
        limit = f"{format_usd(self.limit_usd)} USD" if self.limit_usd is not None else ""
        if self.limit_tokens is not None:
            limit = (
                f"{limit} / {self.limit_tokens} tokens" if limit else f"{self.limit_tokens} tokens"
            )
        whom = "everything" if self.scope == "global" else f"{self.scope} {self.subject!r}"
        return f"budget {self.name!r} ({limit} per {self.period} for {whom})"


@dataclass(frozen=True, slots=True)
class Hold:
    """What one request reserves against each budget it counts against."""

    usd: Decimal
    tokens: int


@dataclass(frozen=True, slots=True)
class Amount:
    """Money and tokens spent, reserved or admitted."""

    usd: Decimal = ZERO
    tokens: int = 0

    def plus(self, other: Amount | Hold) -> Amount:
        return Amount(EXACT.add(self.usd, other.usd), self.tokens + other.tokens)


NOTHING = Amount()


def budget_of(row: dict[str, Any]) -> Budget:
    return Budget(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        subject=row["subject"],
        period=row["period"],
        limit_usd=row["limit_usd"],
        limit_tokens=row["limit_tokens"],
        alerts=tuple(row["alerts"] or ()),
        actions=parse_actions(row.get("actions")),
    )
