"""Budgets decided from memory while the database is away (``proxy.access.outage``)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from proxy.access.outage import OutageLedger
from proxy.errors import BudgetExceeded, DatabaseUnavailable
from proxy.spend.budget import Amount, Budget, Hold
from proxy.spend.periods import period_start

AT = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)
USD = Budget("b-usd", "usd", "key", "k1", "day", Decimal("1.00"), None, ())
TOKENS = Budget("b-tok", "tok", "global", None, "hour", None, 1000, ())
HOLD = Hold(Decimal("0.04"), 50)


def slot(budget: Budget, at: datetime = AT) -> tuple[str, datetime]:
    return (budget.id, period_start(budget.period, at))


def admitted(ledger: OutageLedger, budgets: list[Budget], hold: Hold, tries: int) -> int:
    count = 0
    for _ in range(tries):
        try:
            ledger.admit(budgets, hold, AT)
        except DatabaseUnavailable:
            break
        count += 1
    return count


def test_the_allowance_bounds_what_one_replica_admits_per_outage() -> None:
    ledger = OutageLedger(0.2)
    ledger.end_read({slot(USD): Amount(Decimal("0.30"), 0)})
    assert admitted(ledger, [USD], HOLD, 100) == 5  # 5 x 0.04 = 0.20 of the 1.00 limit
    assert ledger.used(slot(USD)) == Amount(Decimal("0.50"), 250)
    with pytest.raises(DatabaseUnavailable, match="budget_outage_allowance"):
        ledger.admit([USD], HOLD, AT)
    # The database takes a reservation again: the outage is over, the next one starts afresh.
    ledger.reserved([USD], HOLD, AT)
    assert not ledger.in_outage
    assert admitted(ledger, [USD], HOLD, 100) == 5


def test_a_budget_used_up_as_last_known_refuses_with_429() -> None:
    ledger = OutageLedger(1.0)
    ledger.end_read({slot(TOKENS): Amount(Decimal(0), 980)})
    with pytest.raises(BudgetExceeded, match="980 tokens spent or reserved"):
        ledger.admit([USD, TOKENS], HOLD, AT)
    # All or nothing: the USD budget counted nothing for the refused request.
    assert ledger.used(slot(USD)) == Amount()
    assert ledger.admitted_total == 0


def test_zero_allowance_refuses_every_budgeted_request() -> None:
    ledger = OutageLedger(0)
    with pytest.raises(DatabaseUnavailable):
        ledger.admit([USD], HOLD, AT)


def test_a_read_replaces_what_was_admitted_before_it_began_but_not_after() -> None:
    ledger = OutageLedger(0.5)
    ledger.reserved([USD], HOLD, AT)  # in the database by the time the read begins
    ledger.begin_read()
    ledger.reserved([USD], Hold(Decimal("0.01"), 1), AT)  # maybe not in the read's snapshot
    assert ledger.used(slot(USD)) == Amount(Decimal("0.05"), 51)
    ledger.end_read({slot(USD): Amount(Decimal("0.04"), 50)})
    assert ledger.used(slot(USD)) == Amount(Decimal("0.05"), 51)
    ledger.begin_read()
    ledger.read_failed()  # nothing is forgotten when a read fails
    assert ledger.used(slot(USD)) == Amount(Decimal("0.05"), 51)


def test_each_period_counts_apart() -> None:
    ledger = OutageLedger(1.0)
    ledger.end_read({slot(TOKENS): Amount(Decimal(0), 1000)})
    later = AT.replace(hour=13)
    ledger.admit([TOKENS], HOLD, later)  # a new hour: nothing known used in it
    assert ledger.used(slot(TOKENS, later)).tokens == 50
