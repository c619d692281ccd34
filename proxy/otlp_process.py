"""The OpenTelemetry export in a child process, so its CPU work never competes with requests.

Making a span and its metric values and encoding the protobuf take ~100 µs of CPU per
record; in the proxy's process that time would hold the GIL the event loop needs. Here the
writer's ``submit`` only queues a committed batch; a sender thread turns each record into
the plain tuple of its exported fields (``proxy.genai_spans.SpanRecord``) and pickles the
batch (~2 µs a record, against ~9 µs for the records themselves) down a pipe to a child
process, started with ``spawn``, that runs
``proxy.otlp_export.OtlpExport`` (the SDK is imported there only). The child ignores
SIGINT and SIGTERM: the proxy decides when it stops, after the last batch, so a shutdown
exports what was stored. What the child exported and dropped comes back through shared
counters for ``/metrics``; a batch that finds the queue full, or a child gone, is dropped
and counted, never waited for.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
from ctypes import c_longlong
from multiprocessing.connection import Connection
from typing import Any

from proxy.config import Settings
from proxy.genai_spans import SpanRecord, span_record
from proxy.records import RequestRecord

log = logging.getLogger(__name__)

Counter = c_longlong
"""A count in shared memory, written by the child and read by the proxy."""
_STOP: list[RequestRecord] = []
_PUBLISH_SECONDS = 0.25
_END = b""
"""Sent down the pipe last: the child exports what it holds and exits."""


class OtlpProcess:
    """The export's front in the proxy: the same ``start``/``submit``/``stats``/``close`` as
    ``OtlpExport``, which runs in the child."""

    def __init__(self, settings: Settings) -> None:
        if settings.telemetry.otlp_endpoint is None:
            raise ValueError("OtlpProcess needs telemetry.otlp_endpoint")
        self._settings = settings
        self._room = settings.telemetry.queue_size
        self._context = multiprocessing.get_context("spawn")
        self._queue: queue.Queue[list[RequestRecord]] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self._dropped_here = 0
        # One writer each (the child), no lock: a semaphore would outlive a killed proxy.
        self._exported: Counter = self._context.RawValue("q", 0)
        self._dropped: Counter = self._context.RawValue("q", 0)
        self._pipe: Connection | None = None
        self._child: Any = None
        self._thread = threading.Thread(target=self._send, name="tallyproxy-otlp", daemon=True)

    def start(self) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        self._child = self._context.Process(
            target=child_main,
            args=(self._settings, receiver, self._exported, self._dropped),
            name="tallyproxy-otlp",
            daemon=True,
        )
        self._child.start()
        receiver.close()  # the child's end
        self._pipe = sender
        self._thread.start()

    def submit(self, records: list[RequestRecord]) -> None:
        """Queue a committed batch for export; never blocks (the writer calls it)."""
        with self._lock:
            if self._queued + len(records) > self._room:
                self._dropped_here += len(records)
                return
            self._queued += len(records)
        self._queue.put(records)

    def stats(self) -> dict[str, int]:
        with self._lock:
            queued, dropped_here = self._queued, self._dropped_here
        return {
            "exported_spans": self._exported.value,
            "dropped_spans": dropped_here + self._dropped.value,
            "queued_spans": queued,
        }

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, let the child export it (for up to ``timeout`` seconds)."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._child is not None:
            self._child.join(timeout)
            if self._child.is_alive():
                log.warning("the OTLP export process did not finish in %.0fs; stopped", timeout)
                self._child.terminate()
                self._child.join(1.0)

    def _send(self) -> None:
        assert self._pipe is not None
        pipe, broken = self._pipe, False
        while True:
            records = self._queue.get()
            if records is _STOP:
                break
            with self._lock:
                self._queued -= len(records)
            if broken:
                self._drop(records)
                continue
            try:
                rows = [tuple(span_record(record)) for record in records]
                pipe.send_bytes(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
            except (OSError, ValueError) as exc:  # the child is gone
                log.error("the OTLP export process is gone (%s); spans are dropped", exc)
                broken = True
                self._drop(records)
        if not broken:
            with contextlib.suppress(OSError, ValueError):  # gone meanwhile: nothing to end
                pipe.send_bytes(_END)
        pipe.close()

    def _drop(self, records: list[RequestRecord]) -> None:
        with self._lock:
            self._dropped_here += len(records)


def child_main(
    settings: Settings,
    pipe: Connection,
    exported: Counter,
    dropped: Counter,
) -> None:
    """The child: batches from the pipe into the SDK's export, until the end or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from proxy.otlp_export import OtlpExport

    export = OtlpExport(settings)
    export.start()
    try:
        while True:
            # Woken at least every quarter second, to publish what the export thread did.
            if pipe.poll(_PUBLISH_SECONDS):
                try:
                    data = pipe.recv_bytes()
                except EOFError:
                    break
                if data == _END:
                    break
                export.submit([SpanRecord._make(row) for row in pickle.loads(data)])
            _publish(export, exported, dropped)
    finally:
        export.close(settings.telemetry.export_timeout)
        _publish(export, exported, dropped)


def _publish(export: Any, exported: Counter, dropped: Counter) -> None:
    stats = export.stats()
    exported.value = stats["exported_spans"]
    dropped.value = stats["dropped_spans"]
