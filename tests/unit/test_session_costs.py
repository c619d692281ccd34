"""The running pending sum of a session: always the exact sum of what is still pending."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from proxy.session_costs import _Session

COSTS = st.decimals(min_value=0, max_value=1000, places=12, allow_nan=False)
OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["add", "forget"]), st.integers(0, 20), COSTS), max_size=200
)


@given(OPERATIONS, st.one_of(st.none(), COSTS))
def test_total_is_stored_plus_exactly_the_pending_costs(
    operations: list[tuple[str, int, Decimal]], stored: Decimal | None
) -> None:
    session = _Session(stored=stored)
    for operation, record, cost in operations:
        if operation == "add":
            session.add_pending(f"r{record}", cost)
        else:
            session.forget(f"r{record}")
    pending = sum((cost for cost, _ in session.pending.values()), Decimal(0))
    assert session.pending_total == pending
    assert session.total() == (stored or Decimal(0)) + pending


def test_many_small_costs_stay_exact() -> None:
    session = _Session(stored=Decimal("1.000000000001"))
    for i in range(10_000):
        session.add_pending(f"r{i}", Decimal("0.000000150000"))
    assert session.total() == Decimal("1.001500000001")
    for i in range(0, 10_000, 2):
        session.forget(f"r{i}")
    assert session.total() == Decimal("1.000750000001")
