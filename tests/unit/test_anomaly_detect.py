"""The anomaly rule: median and MAD of the peers' windows, table-driven over edge cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from proxy.anomalies.detect import MAD_SCALE, Observation, baseline, detect, median

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
K = Decimal(10)


def seen(subject: str, tokens: int, cost: str = "0", *, hours_ago: int = 0,
         group: str | None = "alice", kind: str = "session") -> Observation:  # fmt: skip
    start = NOW - timedelta(hours=hours_ago)
    return Observation(kind, subject, group, start, Decimal(cost), tokens)


def peers(*tokens: int, cost: str = "0", group: str | None = "alice") -> list[Observation]:
    return [seen(f"p{i}", t, cost, hours_ago=1 + i, group=group) for i, t in enumerate(tokens)]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5], Decimal(5)),
        ([1, 3], Decimal(2)),
        ([9, 1, 5], Decimal(5)),
        ([1, 2, 3, 100], Decimal("2.5")),
        ([Decimal("0.1"), Decimal("0.3")], Decimal("0.2")),
    ],
)
def test_median(values: list[Decimal], expected: Decimal) -> None:
    assert median([Decimal(v) for v in values]) == expected


def test_baseline_mad() -> None:
    # |x - 3| over 1,2,3,4,100: 2,1,0,1,97 -> median 1
    assert baseline([Decimal(v) for v in (1, 2, 3, 4, 100)], 5).mad == Decimal(1)
    assert baseline([Decimal(7)] * 4, 4).mad == 0


CASES = [
    # (what, current, history, min_peers, flagged measures)
    ("ten times the usual tokens", seen("s", 1001), peers(100, 100, 100), 3, ["total_tokens"]),
    ("exactly the threshold is not over it", seen("s", 1000), peers(100, 100, 100), 3, []),
    ("zero MAD: k x median still rules", seen("s", 999), peers(100, 100, 100, 100), 3, []),
    ("too few peers: no verdict", seen("s", 10**6), peers(100, 100), 3, []),
    (
        "peers are subjects, not windows: one peer's many windows count once",
        seen("s", 10**6),
        [seen("p", 100, hours_ago=h) for h in range(1, 10)],
        2,
        [],
    ),
    (
        "its own history is not its peers'",
        seen("s", 10**6),
        [seen("s", 1, hours_ago=h) for h in range(1, 5)] + peers(10**6, 10**6, 10**6),
        3,
        [],
    ),
    (
        "wide spread: k robust deviations above the median as well",
        seen("s", 5000),
        peers(100, 100, 400, 1000, 1000),  # median 400, MAD 300: 400 + 10*1.4826*300 = 4847.8
        3,
        ["total_tokens"],
    ),
    (
        "wide spread below the robust bound is no anomaly",
        seen("s", 4800),
        peers(100, 100, 400, 1000, 1000),
        3,
        [],
    ),
    ("zero median: no baseline", seen("s", 50), peers(0, 0, 0, 5), 3, []),
    (
        "cost and tokens both",
        seen("s", 2000, "1.5"),
        peers(100, 110, 120, cost="0.01"),
        3,
        ["cost_usd", "total_tokens"],
    ),
    (
        "unpriced peers (cost 0): tokens only",
        seen("s", 2000, "1.5"),
        peers(100, 110, 120),
        3,
        ["total_tokens"],
    ),
    ("another user's sessions are no peers", seen("s", 10**6), peers(1, 1, 1, group="bob"), 1, []),
    (
        "sessions without a user are peers of one another",
        seen("s", 10**6, group=None),
        peers(1, 1, 1, group=None),
        3,
        ["total_tokens"],
    ),
]


@pytest.mark.parametrize(
    ("current", "history", "min_peers", "flagged"),
    [pytest.param(c, h, m, f, id=what) for what, c, h, m, f in CASES],
)
def test_detect(
    current: Observation, history: list[Observation], min_peers: int, flagged: list[str]
) -> None:
    found = detect([current], history, k=K, min_peers=min_peers)
    measures = [e.measure for a in found for e in a.exceeded]
    assert sorted(measures) == flagged


def test_the_finding_carries_its_baseline() -> None:
    (anomaly,) = detect([seen("s", 5000)], peers(100, 100, 400, 1000, 1000), k=K, min_peers=3)
    (tokens,) = anomaly.exceeded
    assert tokens.baseline.median == 400 and tokens.baseline.mad == 300
    assert tokens.baseline.peers == 5 and tokens.threshold == 400 + K * MAD_SCALE * 300
    assert anomaly.observation.subject == "s" and tokens.value == 5000


def test_kinds_do_not_mix() -> None:
    users = [seen(f"u{i}", 1, kind="user", group=None, hours_ago=i + 1) for i in range(5)]
    assert detect([seen("s", 10**6, group=None)], users, k=K, min_peers=1) == []


def _naive(current: Observation, history: list[Observation], min_peers: int) -> list[str]:
    """The rule as written, with no shortcut: every peer window, every time."""
    peers = [
        o for o in history
        if (o.kind, o.peer_group) == (current.kind, current.peer_group)
        and o.subject != current.subject
    ]  # fmt: skip
    if len({o.subject for o in peers}) < min_peers:
        return []
    flagged = []
    for measure in ("cost_usd", "total_tokens"):
        threshold = baseline([o.value(measure) for o in peers], 0).threshold(K)  # type: ignore[arg-type]
        if threshold is not None and current.value(measure) > threshold:  # type: ignore[arg-type]
            flagged.append(measure)
    return flagged


@pytest.mark.parametrize("seed", range(40))
def test_the_shortcut_never_changes_a_verdict(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    subjects = [f"s{i}" for i in range(rnd.randint(2, 12))]
    history = [
        seen(rnd.choice(subjects), rnd.choice([0, 0, 5, 50, 100, 120, 4000]),
             rnd.choice(["0", "0.01", "0.02", "3"]), hours_ago=rnd.randint(1, 50),
             group=rnd.choice(["alice", "bob"]))
        for _ in range(rnd.randint(1, 60))
    ]  # fmt: skip
    current = [
        seen(rnd.choice([*subjects, "new"]), rnd.choice([0, 60, 900, 1200, 50000]),
             rnd.choice(["0", "0.1", "0.5", "40"]), group=rnd.choice(["alice", "bob"]))
        for _ in range(8)
    ]  # fmt: skip
    min_peers = rnd.randint(1, 4)
    for observation in current:
        found = detect([observation], history, k=K, min_peers=min_peers)
        assert sorted(e.measure for a in found for e in a.exceeded) == _naive(
            observation, history, min_peers
        )
