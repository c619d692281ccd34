"""The replica's lag from the primary's WAL positions over time (pure: no database)."""

from __future__ import annotations

import pytest

from proxy.store.replica import WalHistory, lag_state

# The primary seen at 100 from t=0 to t=2 (idle), at 250 at t=3, at 400 from t=4 to t=6.
SEEN = [(100, 0.0), (100, 1.0), (100, 2.0), (250, 3.0), (400, 4.0), (400, 5.0), (400, 6.0)]


@pytest.mark.parametrize(
    ("replayed", "at", "lag"),
    [
        (400, 6.0, 0.0),  # replayed the newest position: caught up, idle or not
        (500, 6.0, 0.0),  # ahead of the last check (WAL written since): caught up too
        (399, 6.0, 3.0),  # short of 400: as old as the primary was at 250, last seen at t=3
        (250, 6.5, 3.5),
        (100, 6.0, 4.0),  # the idle stretch counts up to its last sighting, t=2
        (120, 6.0, 4.0),
        (99, 6.0, None),  # behind everything remembered: the history cannot tell
    ],
)
def test_lag_is_the_age_of_the_newest_position_replayed(
    replayed: int, at: float, lag: float | None
) -> None:
    history = WalHistory()
    for lsn, seen_at in SEEN:
        history.observe(lsn, seen_at)
    assert history.lag(replayed, at) == lag


def test_a_paused_replica_ages_a_second_per_second() -> None:
    history = WalHistory()
    lags = []
    for second in range(5):
        history.observe(1000 + second * 10, float(second))  # a busy primary
        lags.append(history.lag(1000, float(second)))  # a standby stuck at 1000
    assert lags == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_the_history_keeps_its_bound_and_forgets_another_primary() -> None:
    history = WalHistory(length=3)
    for lsn in (10, 20, 30, 40):
        history.observe(lsn, float(lsn))
    assert history.lag(15, 50.0) is None  # 10 fell out of the bound
    assert history.lag(25, 50.0) == 30.0
    history.observe(5, 60.0)  # a position behind the newest: a new primary after a failover
    assert history.newest() == 5
    assert history.lag(30, 60.0) == 0.0
    assert history.lag(4, 60.0) is None


@pytest.mark.parametrize(
    ("lag", "lagging", "state"),
    [
        (0.0, False, "streaming"),
        (10.0, False, "streaming"),  # at the bound is within it
        (10.1, False, "lagging"),
        (None, False, "lagging"),  # unknown: not trusted with reads
        (7.0, True, "lagging"),  # once lagging, back only within half the bound
        (5.0, True, "streaming"),
        (None, True, "lagging"),
    ],
)
def test_lag_state_with_hysteresis(lag: float | None, lagging: bool, state: str) -> None:
    assert lag_state(lag, 10.0, lagging=lagging) == state
