"""The server\'s shutdown: a second signal cuts the requests still running, records kept."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class CuttingServer(uvicorn.Server):
    """uvicorn's server, but a second SIGINT or SIGTERM cuts the requests still running, at
    once, as the end of ``server.shutdown_grace`` would, and the shutdown still drains the
    record writer. uvicorn's own "force exit" skips the app's shutdown: the cut streams'
    records, still queued, were lost with a traceback."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)
        tasks = list(self.server_state.tasks)
        log.warning("second signal: cutting %d request(s) still running", len(tasks))
        loop = asyncio.get_event_loop()
        for task in tasks:
            loop.call_soon_threadsafe(task.cancel)
