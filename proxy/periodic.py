"""A background task that runs one step every few seconds until stopped.

The step's failures are logged and the loop goes on: a job off the request path (anomalies,
the digest) must neither die of a database blip nor take the process with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` now and then every ``interval`` seconds, on the running loop; failures
    of the ``expected`` kinds (the database away) are logged without a traceback."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval: float,
        *,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        self.name = name
        self.step = step
        self.interval = interval
        self.expected = expected
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except self.expected as exc:  # a database away: one line a round, no traceback
                log.warning("%s: %s; trying again in %.0fs", self.name, exc, self.interval)
            except Exception:  # the job's boundary: logged, and the next round tries again
                log.exception("%s failed; trying again in %.0fs", self.name, self.interval)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
