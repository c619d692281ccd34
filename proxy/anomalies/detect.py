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


def detect(
    current: Iterable[Observation],
    history: Iterable[Observation],
    *,
    k: Decimal,
    min_peers: int,
) -> list[Anomaly]:
    """The observations of ``current`` that exceed their peers' baseline in ``history``."""
    groups: dict[tuple[str, str | None], list[Observation]] = defaultdict(list)
    for past in history:
        groups[past.kind, past.peer_group].append(past)
    found = []
    for observation in current:
        peers = [
            o for o in groups[observation.kind, observation.peer_group]
            if o.subject != observation.subject
        ]  # fmt: skip
        subjects = len({o.subject for o in peers})
        if subjects < min_peers:
            continue
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
