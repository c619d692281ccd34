"""Reads off the primary: a Postgres streaming replica (``database.read_url``) for reads.

Only what merely reads goes there: the usage API, the dashboard (which calls it) and
``tallyproxy report``. Records, sessions, keys, budgets, the admin API and migrations stay
on the primary, and so do the key lookups and budget checks of the request path, which must
see every record.

**How far behind.** Every second :class:`ReplicaMonitor` asks the primary for its WAL
position (``pg_current_wal_lsn()``) and the standby for the position it has replayed
(``pg_last_wal_replay_lsn()``), and remembers when the primary was last seen at each
position (:class:`WalHistory`). The standby's data is then as old as the last moment the
primary stood at a position the standby has replayed: zero on a standby that keeps up,
whether the primary is busy or idle (where the standby's ``pg_last_xact_replay_timestamp()``
ages without any lag), growing by a second per second on a standby whose replay is paused
or whose stream is cut (where ``pg_last_wal_receive_lsn()`` stands still too). The same
clock, this process's, measures every moment, so no two machines' clocks are compared. A
standby too far behind for the history, or seen once (``tallyproxy report``), is measured
the way the standby itself can tell: ``clock_timestamp() - pg_last_xact_replay_timestamp()``
while it has not replayed the primary's position, which can only overstate the lag.

**Where reads go.** To the replica while it is at most ``read_max_lag_seconds`` behind;
otherwise (until it is back within half that bound, so that a replica hovering at the
bound does not switch reads every second), while it does not answer, while it has not yet
replayed what the primary held when this process started (its migrations), or when it is
not a standby at all, to the primary.
While the primary does not answer the monitor, to the replica whatever its lag: an old
answer, flagged as such, rather than none. A read the replica fails (down since the last
check, a query cancelled by recovery) is asked again of the primary. Each change of route
is one log line, with no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.availability import DATABASE_ERRORS, display_url, error_reason

log = logging.getLogger(__name__)

ReadSource = Literal["primary", "replica"]
ReplicaState = Literal["unknown", "starting", "streaming", "lagging", "down", "not_a_standby"]

CHECK_INTERVAL: Final = 1.0
CHECK_TIMEOUT: Final = 2.0
"""Seconds a check may take before the server counts as not answering."""
HISTORY_LENGTH: Final = 3600
"""Distinct primary positions remembered (a new one per check at most: an hour at least)."""
STALE_AFTER: Final = 5.0
"""Seconds after which a check is too old to send reads to the replica on its word."""

_PRIMARY_POSITION = text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
_STANDBY_POSITION = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
    "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
)

Queries = TypeVar("Queries")
Value = TypeVar("Value")


@dataclass(slots=True)
class _Position:
    lsn: int
    first_seen: float
    last_seen: float


class WalHistory:
    """When the primary was last seen at each of its recent WAL positions."""

    def __init__(self, length: int = HISTORY_LENGTH) -> None:
        self._positions: deque[_Position] = deque(maxlen=length)

    def observe(self, lsn: int, at: float) -> None:
        """The primary stands at ``lsn`` at the moment ``at``."""
        newest = self._positions[-1] if self._positions else None
        if newest is not None and newest.lsn == lsn:
            newest.last_seen = at
            return
        if newest is not None and lsn < newest.lsn:
            self._positions.clear()  # another primary (a failover): its past is not ours
        self._positions.append(_Position(lsn, at, at))

    def lag(self, replayed: int, at: float) -> float | None:
        """Seconds since the primary was last at a position the standby has replayed; None
        when the standby is behind every position remembered."""
        for position in reversed(self._positions):
            if position.lsn <= replayed:
                return max(0.0, at - position.last_seen)
        return None

    def newest(self) -> int | None:
        """The primary's position at the last check that reached it."""
        return self._positions[-1].lsn if self._positions else None


def lag_state(lag: float | None, max_lag: float, *, lagging: bool) -> ReplicaState:
    """``streaming`` within the bound, else ``lagging``; an unknown lag is too much.

    Back from ``lagging`` only within half the bound: a replica hovering at the bound would
    otherwise switch reads (and log) every second.
    """
    bound = max_lag / 2 if lagging else max_lag
    return "streaming" if lag is not None and lag <= bound else "lagging"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What the last check found; ``lag_seconds`` is None when unknown."""

    state: ReplicaState
    lag_seconds: float | None = None
    primary_answers: bool = True
    checked_at: float = float("-inf")
    detail: str = ""


class ReplicaMonitor:
    """Measures the replica's lag off the request path and tells where reads go."""

    def __init__(
        self,
        primary: AsyncEngine,
        replica: AsyncEngine,
        max_lag: float,
        *,
        interval: float = CHECK_INTERVAL,
        timeout: float = CHECK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self.replica = replica
        self.max_lag = max_lag
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._history = WalHistory()
        self._task: asyncio.Task[None] | None = None
        self.status = ReplicaStatus("unknown")
        self._route: ReadSource = "primary"
        self._kind = "unknown"
        self._start_position: int | None = None
        self._failures = 0

    @property
    def replica_url(self) -> str:
        return display_url(self.replica)

    async def start(self) -> None:
        """Check once (a replica down is a warning, not a reason to stop), then every second.

        Reads go to the replica only once it has replayed what the primary held now, after
        this process migrated it: a replica within its lag bound may still lack new tables.
        """
        if await self._observe_primary():
            self._start_position = self._history.newest()
        await self.check()
        self._task = asyncio.create_task(self._keep_checking(), name="tallyproxy-replica-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def route(self) -> ReadSource:
        """Where a read goes now."""
        if self._route == "replica" and self._clock() - self.status.checked_at > STALE_AFTER:
            return "primary"  # the monitor is stuck: its last word is too old to trust
        return self._route

    def stats(self) -> dict[str, Any]:
        """What /readyz and /metrics show: state, lag (None when unknown), bound, route."""
        lag = self.status.lag_seconds
        return {
            "state": self.status.state,
            "lag_seconds": None if lag is None else round(lag, 3),
            "max_lag_seconds": self.max_lag,
            "reads_from": self.route(),
        }

    def replica_failed(self, exc: BaseException) -> None:
        """A read on the replica failed: reads go to the primary until the next check."""
        self._failures += 1
        self.status = ReplicaStatus(
            "down", None, self.status.primary_answers, self._clock(), error_reason(exc)
        )
        self._reroute("primary", "down", f"a read failed on it ({error_reason(exc)})")

    async def check(self) -> ReplicaStatus:
        """Measure now: the primary's position first, then the standby's."""
        failures = self._failures
        primary_answers = await self._observe_primary()
        status = await self._measure_standby(primary_answers)
        if self._failures != failures and status.state != "down":
            # A read failed on the replica while this check was under way: what the check
            # saw may predate the failure, so it does not send reads back; the next one may.
            return self.status
        self.status = status
        self._reroute(*self._decide(status))
        return status

    async def _keep_checking(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:
                # The monitor's boundary: a check that fails in an unforeseen way must not
                # end the checks, and reads fall back to the primary meanwhile.
                log.exception("checking the read replica %s failed", self.replica_url)
                self.status = ReplicaStatus("unknown", checked_at=self._clock())
                self._reroute("primary", "unknown", "its check failed")

    async def _observe_primary(self) -> bool:
        try:
            lsn = await self._scalar(self._primary, _PRIMARY_POSITION)
        except DATABASE_ERRORS:
            return False  # the writer and /readyz tell of the primary's absence
        self._history.observe(int(lsn), self._clock())
        return True

    async def _measure_standby(self, primary_answers: bool) -> ReplicaStatus:
        try:
            async with asyncio.timeout(self._timeout):
                async with self.replica.connect() as connection:
                    row = (await connection.execute(_STANDBY_POSITION)).one()
        except DATABASE_ERRORS as exc:
            return ReplicaStatus("down", None, primary_answers, self._clock(), error_reason(exc))
        now = self._clock()
        in_recovery, replayed, since_replay = row
        if not in_recovery:
            return ReplicaStatus("not_a_standby", None, primary_answers, now)
        lag = self._lag(int(replayed), now, None if since_replay is None else float(since_replay))
        state = lag_state(lag, self.max_lag, lagging=self._kind == "lagging")
        if self._start_position is not None:
            if int(replayed) < self._start_position:
                state = "starting"
            else:
                self._start_position = None
        return ReplicaStatus(state, lag, primary_answers, now)

    def _lag(self, replayed: int, now: float, since_replay: float | None) -> float | None:
        lag = self._history.lag(replayed, now)
        if lag is not None:
            return lag
        newest = self._history.newest()
        if newest is not None and replayed >= newest:
            return 0.0
        # Behind every position remembered: the standby's own word, an upper bound.
        return None if since_replay is None else max(0.0, since_replay)

    def _decide(self, status: ReplicaStatus) -> tuple[ReadSource, str, str]:
        """Where reads go, why in one word (a change of it is logged), and why in words."""
        if status.state == "down":
            return "primary", "down", f"it does not answer ({status.detail})"
        if status.state == "not_a_standby":
            return "primary", "not_a_standby", "it is not a standby (pg_is_in_recovery() false)"
        if status.state == "starting":
            return "primary", "starting", "it has not replayed this process's start-up yet"
        if not status.primary_answers:
            return "replica", "primary_down", "the primary does not answer; answers may be old"
        lag = status.lag_seconds
        if status.state == "lagging":
            behind = "an unknown time" if lag is None else f"{lag:.1f}s"
            limit = f"database.read_max_lag_seconds ({self.max_lag:g})"
            return "primary", "lagging", f"it is {behind} behind the primary, over {limit}"
        return "replica", "streaming", f"{lag or 0.0:.1f}s behind the primary"

    def _reroute(self, route: ReadSource, kind: str, reason: str) -> None:
        if (route, kind) == (self._route, self._kind):
            return
        level = logging.INFO if kind in ("streaming", "starting") else logging.WARNING
        log.log(level, "read replica %s: reads go to the %s: %s", self.replica_url, route, reason)
        self._route, self._kind = route, kind

    async def _scalar(self, engine: AsyncEngine, query: TextClause) -> Any:
        async with asyncio.timeout(self._timeout):
            async with engine.connect() as connection:
                return (await connection.execute(query)).scalar_one()


@dataclass(frozen=True, slots=True)
class Read(Generic[Value]):
    """A read's answer, where it came from, and the replica's lag as last measured."""

    value: Value
    source: ReadSource
    replica_lag: float | None = None


class Reads(Generic[Queries]):
    """Runs reads on the replica's queries or the primary's, as the monitor says."""

    def __init__(
        self,
        primary: Queries,
        replica: Queries | None = None,
        monitor: ReplicaMonitor | None = None,
    ) -> None:
        if (replica is None) != (monitor is None):
            raise ValueError("a replica needs its monitor, and a monitor its replica")
        self.primary = primary
        self._replica = replica
        self.monitor = monitor

    async def run(
        self, read: Callable[[Queries], Awaitable[Value]], *, confirm_missing: bool = False
    ) -> Read[Value]:
        """``read`` on the replica when it may serve, else on the primary.

        ``confirm_missing``: a None from the replica (a record or session not replayed yet)
        is asked again of the primary, so a lookup right after a write does not answer 404.
        """
        if self._replica is None or self.monitor is None:
            return Read(await read(self.primary), "primary")
        if self.monitor.route() == "replica":
            try:
                value = await read(self._replica)
            except DATABASE_ERRORS as exc:
                self.monitor.replica_failed(exc)
            else:
                if value is not None or not confirm_missing:
                    return Read(value, "replica", self.monitor.status.lag_seconds)
        return Read(await read(self.primary), "primary", self.monitor.status.lag_seconds)
