"""Records the writer could not store: counted by reason, logged at most once a second.

Losses come in bursts (a full disk refuses every batch), so the log says the running totals
once per interval instead of a line, or a traceback, per record or per batch. The counts are
exposed in ``/metrics`` as ``tallyproxy_records_lost_total{reason=...}``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

# The writer's own logger: these lines are the writer's, and are filtered or routed with it.
log = logging.getLogger("proxy.store.writer")

LOG_INTERVAL = 1.0

LossReason = Literal["unstorable", "queue_full", "closed", "unpreparable", "refused", "shutdown"]
"""Why a record was lost: ``unstorable`` memory at its bound with the database down (so the
spool, full or unwritable, refused records too); ``queue_full`` the writer was ``queue_size``
records behind a working database; ``closed`` submitted after stop; ``unpreparable``
metering it failed; ``refused`` the database refuses its values; ``shutdown`` neither
written nor spooled when stop's time was up."""


class Throttle:
    """True at most once per ``interval`` seconds: for log lines that would repeat."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: float | None = None

    def ready(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


class Losses:
    """Lost records by reason; ``count`` logs the totals (with ``context``) when due."""

    def __init__(self, context: Callable[[], str], interval: float = LOG_INTERVAL) -> None:
        self.by_reason: Counter[LossReason] = Counter()
        self.total = 0
        self._context = context
        self._throttle = Throttle(interval)

    def count(self, records: int, reason: LossReason) -> None:
        self.by_reason[reason] += records
        self.total += records
        if self._throttle.ready():
            log.error(
                "record writer lost records (%s; %d in total): %s",
                ", ".join(f"{why} {n}" for why, n in sorted(self.by_reason.items())),
                self.total,
                self._context(),
            )
