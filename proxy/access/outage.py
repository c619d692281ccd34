"""Budgets while the database is away, pure: the last known usage and what was admitted since.

Normally the database decides every reservation (``proxy.store.budgets``). When it cannot
be reached, this replica decides from what it knows:

- the usage of each budget's current period (spent plus reserved) as last read from the
  database (``Budgets`` reads it with the definitions, every refresh);
- plus the holds this replica admitted after that read began, through the database or
  from memory.

A request is refused (429) when it would exceed the limit by that reckoning, as the
database would refuse it. Other replicas' spending since the last read is unknown here, so
each replica admits at most ``allowance`` (a share of each limit) from memory per outage;
past that, budgeted requests get a 503 until the database is back. The records of requests
admitted from memory are spooled like any other and settle their budgets when they are
written: the totals end up exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from proxy.errors import BudgetExceeded, DatabaseUnavailable
from proxy.money import EXACT, format_usd
from proxy.spend.budget import NOTHING, Amount, Budget, Hold, Slot
from proxy.spend.periods import period_start


def _add(into: dict[Slot, Amount], slot: Slot, amount: Amount | Hold) -> None:
    into[slot] = into.get(slot, NOTHING).plus(amount)


def _fits(used: Amount, hold: Hold, budget: Budget) -> bool:
    """The database's rule (``_hold`` in ``proxy.store.budgets``), on known numbers."""
    if budget.limit_usd is not None and (
        used.usd >= budget.limit_usd or EXACT.add(used.usd, hold.usd) > budget.limit_usd
    ):
        return False
    return budget.limit_tokens is None or (
        used.tokens < budget.limit_tokens and used.tokens + hold.tokens <= budget.limit_tokens
    )


def _within_allowance(admitted: Amount, hold: Hold, budget: Budget, allowance: Decimal) -> bool:
    if budget.limit_usd is not None and EXACT.add(admitted.usd, hold.usd) > EXACT.multiply(
        allowance, budget.limit_usd
    ):
        return False
    return budget.limit_tokens is None or (
        admitted.tokens + hold.tokens <= allowance * budget.limit_tokens
    )


class OutageLedger:
    """This replica's view of its budgets' usage, for deciding while the database is away."""

    def __init__(self, allowance: float) -> None:
        self.allowance = Decimal(str(allowance))
        self._known: dict[Slot, Amount] = {}  # spent + reserved, as read last
        self._in_read: dict[Slot, Amount] = {}  # admitted before the read on its way began
        self._since: dict[Slot, Amount] = {}  # admitted after it began
        self._outage: dict[Slot, Amount] = {}  # admitted from memory in this outage
        self.admitted_total = 0
        """Requests admitted from memory (across outages)."""

    @property
    def in_outage(self) -> bool:
        """Whether requests were admitted from memory since the database last answered."""
        return bool(self._outage)

    def used(self, slot: Slot) -> Amount:
        """The usage of a budget's period as this replica knows it."""
        used = self._known.get(slot, NOTHING)
        for admitted in (self._in_read, self._since):
            used = used.plus(admitted.get(slot, NOTHING))
        return used

    def begin_read(self) -> None:
        """A read of the usage starts: what was admitted so far is in the database by now."""
        for slot, amount in self._since.items():
            _add(self._in_read, slot, amount)
        self._since = {}

    def end_read(self, usage: Mapping[Slot, Amount]) -> None:
        """The read's result replaces the known usage."""
        self._known = dict(usage)
        self._in_read = {}

    def read_failed(self) -> None:
        for slot, amount in self._in_read.items():
            _add(self._since, slot, amount)
        self._in_read = {}

    def reserved(self, budgets: Sequence[Budget], hold: Hold, at: datetime) -> None:
        """The database took a reservation: count it, and end any outage."""
        self._outage = {}
        for budget in budgets:
            _add(self._since, (budget.id, period_start(budget.period, at)), hold)

    def admit(self, budgets: Sequence[Budget], hold: Hold, at: datetime) -> None:
        """Admit a request from memory on every budget, or on none: raise ``BudgetExceeded``
        (over the limit as last known) or ``DatabaseUnavailable`` (allowance used up)."""
        slots = [(budget, (budget.id, period_start(budget.period, at))) for budget in budgets]
        for budget, slot in slots:
            used = self.used(slot)
            if not _fits(used, hold, budget):
                raise BudgetExceeded(_exceeded(budget, used, hold))
            if not _within_allowance(self._outage.get(slot, NOTHING), hold, budget, self.allowance):
                raise DatabaseUnavailable(
                    f"the database is unavailable and {budget.describe()} cannot be checked: "
                    f"this replica admitted {float(self.allowance):.1%} of its limit meanwhile "
                    "(access.budget_outage_allowance); try again shortly"
                )
        for _, slot in slots:
            _add(self._since, slot, hold)
            _add(self._outage, slot, hold)
        self.admitted_total += 1


def _exceeded(budget: Budget, used: Amount, hold: Hold) -> str:
    if budget.limit_usd is not None:
        numbers = f"{format_usd(used.usd)} USD spent or reserved, this request reserves "
        numbers += f"{format_usd(hold.usd)} USD"
    else:
        numbers = f"{used.tokens} tokens spent or reserved, this request reserves {hold.tokens}"
    return (
        f"{budget.describe()} would be exceeded: {numbers} (as last known: the database is "
        "unavailable)"
    )
