"""A session's running total: exact while records are noted, committed, confirmed and read.

The state machine plays the writer and the database around ``_Session``: records are noted
(answered), committed by the writer, confirmed to the session after their commit, and reads
begin, take their snapshot at any later moment and end, in every interleaving. Whatever the
order, the total is the sum of every noted cost, and ids leave once they are known stored.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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


class WriterAndDatabase(RuleBasedStateMachine):
    """``_Session`` between a writer that commits and confirms, and reads of the database."""

    def __init__(self) -> None:
        super().__init__()
        self.session = _Session()
        self.ids = (f"r{n}" for n in itertools.count())
        self.noted: dict[str, Decimal] = {}
        self.uncommitted: list[str] = []
        self.unconfirmed: list[str] = []  # committed, the writer's word not given yet
        self.database: dict[str, Decimal] = {}
        self.asked: list[str] | None = None  # by the read on its way
        self.snapshot: dict[str, Decimal] | None = None
        self.noted_during_read: set[str] = set()

    @rule(cost=COSTS)
    def answer(self, cost: Decimal) -> None:
        record_id = next(self.ids)
        self.noted[record_id] = cost
        self.session.add_pending(record_id, cost)
        self.uncommitted.append(record_id)
        if self.asked is not None and self.snapshot is None:
            self.noted_during_read.add(record_id)

    @precondition(lambda self: self.uncommitted)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        # Answered after a read began and committed before its snapshot: a batch of several
        # round trips beating one statement already sent, which the session does not cover.
        eligible = [r for r in self.uncommitted if r not in self.noted_during_read]
        if not eligible:
            return
        record_id = data.draw(st.sampled_from(eligible))
        self.uncommitted.remove(record_id)
        self.database[record_id] = self.noted[record_id]
        self.unconfirmed.append(record_id)

    @precondition(lambda self: self.unconfirmed)
    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        record_id = data.draw(st.sampled_from(self.unconfirmed))
        self.unconfirmed.remove(record_id)
        self.session.committed(record_id)

    @precondition(lambda self: self.asked is None)
    @rule()
    def begin_read(self) -> None:
        self.asked = self.session.begin_read()
        self.session.reading = object()  # type: ignore[assignment]  # a read on its way

    @precondition(lambda self: self.asked is not None and self.snapshot is None)
    @rule()
    def snapshot_taken(self) -> None:
        self.snapshot = dict(self.database)
        self.noted_during_read.clear()

    @precondition(lambda self: self.snapshot is not None)
    @rule(fails=st.booleans())
    def end_read(self, fails: bool) -> None:
        assert self.asked is not None and self.snapshot is not None
        if fails:
            self.session.read_failed()
        else:
            stored = sum(self.snapshot.values(), Decimal(0)) if self.snapshot else None
            found = [record_id for record_id in self.asked if record_id in self.snapshot]
            self.session.end_read(stored, found, at=0.0)
        self.session.reading = None
        self.asked, self.snapshot = None, None

    @invariant()
    def total_is_every_noted_cost(self) -> None:
        assert self.session.total() == sum(self.noted.values(), Decimal(0))

    @invariant()
    def only_ids_not_known_stored_are_kept(self) -> None:
        # Ids the writer confirmed outside any read are never kept.
        assert self.session.pending.keys() <= (
            set(self.uncommitted)
            | set(self.unconfirmed)
            | self.session.committed_during_read
            | self.session.seen_for_sure
        )


TestWriterAndDatabase = WriterAndDatabase.TestCase
