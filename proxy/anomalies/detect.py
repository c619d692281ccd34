"""The anomaly rule: a subject's cost or tokens in a window against its peers' baseline.

A subject (a session, user or key) has one *observation* per window: its cost and tokens in
it. Its peers are the other subjects of its peer group (a session's user; for users and keys
all of their kind); their observations over the last days, one per subject and window they
were active in, are the baseline. An observation is anomalous in a measure when it exceeds

    max(k x median, median + k x 1.4826 x MAD)

of its peers' observations: ``k`` times the usual (so zero spread among identical peers
does not make a little more an anomaly), and ``k`` robust standard deviations above it (so
peers that vary widely do not make their own highs anomalies). No verdict with fewer than
``min_peers`` peers, or a median of zero (nothing to be a multiple of: unpriced models).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

Measure = Literal["cost_usd", "total_tokens"]
MEASURES: tuple[Measure, ...] = ("cost_usd", "total_tokens")
MAD_SCALE = Decimal("1.4826")
"""MAD times this estimates the standard deviation of normally distributed values."""


@dataclass(frozen=True, slots=True)
class Observation:
    kind: str
    subject: str
    peer_group: str | None
    window_start: datetime
    cost_usd: Decimal
    total_tokens: int

    def value(self, measure: Measure) -> Decimal:
        return self.cost_usd if measure == "cost_usd" else Decimal(self.total_tokens)


@dataclass(frozen=True, slots=True)
class Baseline:
    median: Decimal
    mad: Decimal
    peers: int
    observations: int

    def threshold(self, k: Decimal) -> Decimal | None:
        """The value an observation must exceed; None when the median is zero."""
        if self.median <= 0:
            return None
        return max(k * self.median, self.median + k * MAD_SCALE * self.mad)


@dataclass(frozen=True, slots=True)
class Exceeded:
    measure: Measure
    value: Decimal
    baseline: Baseline
    threshold: Decimal


@dataclass(frozen=True, slots=True)
class Anomaly:
    observation: Observation
    exceeded: tuple[Exceeded, ...]


def median(values: Sequence[Decimal]) -> Decimal:
    """The middle value (the mean of the middle two for an even count); ``values`` not empty."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def baseline(values: Sequence[Decimal], peers: int) -> Baseline:
    """Median and median absolute deviation of ``values`` (from ``peers`` subjects)."""
    center = median(values)
    return Baseline(center, median([abs(v - center) for v in values]), peers, len(values))


class _Group:
    """The history of one peer group, sorted once per measure, to rule out at a glance the
    observations that cannot exceed their baseline: excluding ``m`` own windows from ``n``
    leaves a median between the sorted values at ``(n-m-1)//2`` and ``(n-m)//2 + m``."""

    def __init__(self, history: list[Observation]) -> None:
        self.history = history
        self.sorted = {m: sorted(o.value(m) for o in history) for m in MEASURES}
        self.windows: dict[str, int] = defaultdict(int)
        for o in history:
            self.windows[o.subject] += 1

    def may_exceed(self, observation: Observation, k: Decimal) -> bool:
        own = self.windows.get(observation.subject, 0)
        left = len(self.history) - own
        if left <= 0:
            return False
        for measure in MEASURES:
            values = self.sorted[measure]
            lowest = values[(left - 1) // 2]
            highest = values[min(left // 2 + own, len(values) - 1)]
            if highest > 0 and observation.value(measure) > k * lowest:
                return True
        return False

    def peers(self, observation: Observation) -> list[Observation]:
        return [o for o in self.history if o.subject != observation.subject]


def detect(
    current: Iterable[Observation],
    history: Iterable[Observation],
    *,
    k: Decimal,
    min_peers: int,
) -> list[Anomaly]:
    """The observations of ``current`` that exceed their peers' baseline in ``history``."""
    by_group: dict[tuple[str, str | None], list[Observation]] = defaultdict(list)
    for past in history:
        by_group[past.kind, past.peer_group].append(past)
    groups = {key: _Group(observations) for key, observations in by_group.items()}
    found = []
    for observation in current:
        group = groups.get((observation.kind, observation.peer_group))
        if group is None:
            continue
        subjects = len(group.windows) - (observation.subject in group.windows)
        if subjects < min_peers or not group.may_exceed(observation, k):
            continue
        peers = group.peers(observation)
        exceeded = []
        for measure in MEASURES:
            base = baseline([o.value(measure) for o in peers], subjects)
            threshold = base.threshold(k)
            value = observation.value(measure)
            if threshold is not None and value > threshold:
                exceeded.append(Exceeded(measure, value, base, threshold))
        if exceeded:
            found.append(Anomaly(observation, tuple(exceeded)))
    return found
