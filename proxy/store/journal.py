"""The write-ahead journal: what a record needs reaches a file before its answer ends.

The record writer holds submitted exchanges in memory until a batch is committed or spooled;
a SIGKILL (OOM killer, ``docker kill``, a lost node) would lose them. So every exchange is
first appended to this journal, one compact JSON line written with a single ``os.write`` to
an ``O_APPEND`` file: it is in the page cache, which survives the death of the process, before
the client sees the end of its answer. There is no fsync (a power cut may lose the last
lines, as it may lose the last batch the database has not committed): the spool stays the
place where records are made durable while the database is down.

Layout: ``<spool_dir>/journal/slot-<n>/wal-<seq>.jsonl``, one slot per process under an
``flock`` (``proxy.store.slots``), so replicas and ``--workers`` never share a journal.
Segments roll over at ``segment_bytes``; a segment is deleted once every exchange in it is
settled: committed to the database, fsync'd in the spool, or refused by the database for
good. At start, the lines left in slots whose process is gone are decoded, copied into this
process's journal and submitted again; record inserts are idempotent on the id, so a line
whose record was stored before the crash costs nothing.

A line holds what the record needs and nothing private: no prompt, no completion, no key.
An exchange whose record needed a local estimate (no usage from the provider) is therefore
recovered without one, with ``error`` saying so (``ESTIMATE_LOST``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from proxy.pricing import Cost
from proxy.records import Exchange
from proxy.store.slots import acquire_slot, lock_slot, release_slot, slot_dirs
from proxy.usage import Usage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
KILLED_MID_STREAM = (
    "the proxy was killed before this stream ended (recovered from its journal): "
    "tokens and cost unknown"
)
ESTIMATE_LOST = (
    "usage estimate unavailable: the proxy was killed before metering this request "
    "(recovered from its journal, which keeps no prompt or completion)"
)
_PREFIX = "wal-"
_SUFFIX = ".jsonl"
_WARNING_INTERVAL = 5.0


def encode_exchange(exchange: Exchange) -> bytes:
    """One journal line (with its newline): the exchange without its prompt or completion."""
    cost, usage = exchange.cost, exchange.provider_usage
    return orjson.dumps(
        [
            FORMAT_VERSION,
            exchange.id,
            exchange.created_at,
            exchange.method,
            exchange.endpoint,
            exchange.upstream,
            exchange.provider,
            exchange.stream,
            exchange.model,
            exchange.session_id,
            exchange.user_id,
            exchange.properties,
            exchange.key_id,
            exchange.status_code,
            exchange.response_model,
            None if usage is None else _usage_values(usage),
            None if cost is None else (str(cost.usd), cost.source, cost.version, cost.priced_as),
            exchange.completed,
            exchange.latency_ms,
            exchange.ttft_ms,
            exchange.error,
            # Whether the record would have been estimated locally (and cannot be now).
            exchange.provider_usage is None and exchange.request_body is not None,
            # Appended later: a line written before has none of these (decode_exchange).
            exchange.session_path,
            exchange.session_name,
            exchange.trace_id,
            exchange.span_id,
            exchange.tool_calls,
            exchange.tool_results,
            exchange.downgraded_from,
        ],
        option=orjson.OPT_APPEND_NEWLINE,
    )


def _usage_values(usage: Usage) -> tuple[int | bool, ...]:
    # By hand: orjson writes a slotted dataclass three times slower than a tuple.
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cached_tokens,
        usage.cache_creation_tokens,
        usage.reasoning_tokens,
        usage.prompt_audio_tokens,
        usage.completion_audio_tokens,
        usage.repaired,  # appended later: older lines have eight values, read as not repaired
    )


def decode_exchange(line: bytes) -> Exchange:
    """The exchange of one journal line; raises ``ValueError`` on anything it cannot read."""
    try:
        values = orjson.loads(line)
        if not isinstance(values, list) or not values or values[0] != FORMAT_VERSION:
            raise ValueError("not a version 1 journal line")
        (_, id_, created, method, endpoint, upstream, provider, stream, model, session_id,
         user_id, properties, key_id, status, response_model, usage, cost, completed,
         latency_ms, ttft_ms, error, needed_estimate) = values[:_FIRST_FIELDS]  # fmt: skip
        (session_path, session_name, trace_id, span_id, tool_calls, tool_results,
         downgraded_from) = _later_fields(values)  # fmt: skip
        exchange = Exchange(
            id=id_,
            created_at=datetime.fromisoformat(created),
            method=method,
            endpoint=endpoint,
            upstream=upstream,
            stream=stream,
            model=model,
            session_id=session_id,
            user_id=user_id,
            properties=properties,
            provider=provider,
            key_id=key_id,
            status_code=status,
            response_model=response_model,
            provider_usage=None if usage is None else Usage(*usage),
            cost=None if cost is None else Cost(Decimal(cost[0]), cost[1], cost[2], cost[3]),
            completed=completed,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            error=error,
            session_path=session_path,
            session_name=session_name,
            trace_id=trace_id,
            span_id=span_id,
            tool_calls=tool_calls or 0,
            tool_results=tool_results or 0,
            downgraded_from=downgraded_from,
        )
    except (TypeError, ArithmeticError) as exc:
        raise ValueError(f"unreadable journal line: {exc}") from None
    if not exchange.completed and exchange.error is None:
        exchange.error = KILLED_MID_STREAM  # only the stream's opening line was written
    elif needed_estimate and exchange.error is None:
        exchange.error = ESTIMATE_LOST
    return exchange


_FIRST_FIELDS = 22
_LATER_FIELDS = (0, 4, 6, 7)
"""How many fields later releases appended: none, then session path to span id, then the
tool call and tool result counts, then downgraded_from."""


def _later_fields(values: list[Any]) -> list[Any]:
    """The fields appended after the first release of the format; None where a line written
    by an older release has none."""
    later = values[_FIRST_FIELDS:]
    if len(later) not in _LATER_FIELDS:
        raise ValueError(f"a journal line of {len(values)} fields")
    return later + [None] * (_LATER_FIELDS[-1] - len(later))


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


@dataclass(slots=True)
class _Segment:
    path: Path
    unsettled: int = 0


class Journal:
    """This process's journal, in a slot of ``directory``.

    ``open`` takes a slot and returns what dead processes left; ``write`` appends one
    exchange; ``settle`` is told which records are safe; ``close`` removes the journal when
    everything in it is settled and keeps it for the next start otherwise. All methods run
    on the event loop; only ``open`` and ``close`` touch directories.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._slot: Path | None = None
        self._lock_file: BinaryIO | None = None
        self._fd: int | None = None
        self._active_size = 0
        self._next_seq = 0
        self._segments: dict[int, _Segment] = {}
        self._where: dict[str, int] = {}
        self._opening: set[str] = set()  # ids whose only line is a stream's opening one
        # Opening lines wait for the next write or the end of this loop iteration: nothing
        # ends for the client before either, and one system call then carries them all.
        self._held: list[bytes] = []
        self._held_ids: list[str] = []
        self._flush_scheduled = False
        self._last_warning = 0.0
        self.failed_writes = 0
        """Lines that could not be written (disk full, unwritable): those records are only
        in memory until the writer stores them."""
        self.recovered_total = 0
        """Exchanges taken over from dead processes' journals at start."""

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._where

    def holds_final(self, record_id: str) -> bool:
        """Whether the exchange's line tells how it ended (not just a stream's opening)."""
        return record_id in self._where and record_id not in self._opening

    @property
    def unsettled(self) -> int:
        """Exchanges journaled and not yet safe."""
        return len(self._where)

    @property
    def location(self) -> Path:
        return self._slot or self.directory

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> list[Exchange]:
        """Take a slot; return the exchanges left by dead processes, now in this journal.

        A journal that cannot be used (directory unwritable, disk full) does not stop the
        proxy: it serves without one, saying so, and what dead processes left stays on disk.
        """
        try:
            return self._open()
        except OSError as exc:
            log.error(
                "journal: cannot use %s (%s); serving without a journal: a kill would lose "
                "the records still in memory",
                self.directory,
                exc,
            )
            return []

    def _open(self) -> list[Exchange]:
        self._slot, self._lock_file = acquire_slot(self.directory)
        leftovers = _wal_paths(self._slot)
        dead: list[tuple[Path, BinaryIO]] = []
        for slot in slot_dirs(self.directory):
            if slot == self._slot:
                continue
            lock_file = lock_slot(slot, create=False)
            if lock_file is not None:
                dead.append((slot, lock_file))
                leftovers += _wal_paths(slot)
        if leftovers:
            self._next_seq = max(_seq(p) for p in leftovers) + 1
        lines = _read_lines(leftovers)
        self._open_segment()
        if lines:
            # Copied before the old files go: a crash right now still leaves every line.
            self._append(b"".join(lines.values()), lines.keys())
        for path in leftovers:
            path.unlink()
        for slot, lock_file in dead:
            release_slot(slot, lock_file, remove=True)
        recovered = [decode_exchange(line) for line in lines.values()]
        self.recovered_total = len(recovered)
        if recovered:
            log.warning(
                "journal: %d requests left by processes that ended before their records "
                "were safe (killed), from %d files in %s; recording them now",
                len(recovered),
                len(leftovers),
                self.directory,
            )
        return recovered

    def close(self) -> None:
        """Remove the journal if everything is settled; otherwise keep it for the next start."""
        self._flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._slot is None or self._lock_file is None:
            return
        for seq, segment in list(self._segments.items()):
            if segment.unsettled == 0:
                self._delete(seq)
        if self._segments:
            log.warning(
                "journal %s keeps %d requests whose records were not stored, for the next "
                "start to record",
                self._slot,
                self.unsettled,
            )
        release_slot(self._slot, self._lock_file, remove=not self._segments)
        self._slot = self._lock_file = None
        with contextlib.suppress(OSError):
            self.directory.rmdir()  # only if no other process has a slot in it

    # -- the request path -------------------------------------------------------------------

    def write(self, exchange: Exchange, *, opening: bool = False) -> None:
        """Append ``exchange`` (page cache, no fsync); a failure is counted and logged.

        An ``opening`` line (a stream that has just begun) is superseded by a later line of
        the same exchange; alone after a kill, it is recorded as ``KILLED_MID_STREAM``.
        """
        line = encode_exchange(exchange)
        if opening:
            self._held.append(line)
            self._held_ids.append(exchange.id)
            self._opening.add(exchange.id)
            self._schedule_flush()
        else:
            self._opening.discard(exchange.id)
            self._flush(line, exchange.id)

    def settle(self, records: Iterable[_Identified]) -> None:
        """These records are safe (stored, or fsync'd in the spool): their lines may go."""
        for record in records:
            self._forget(record.id)

    # -- implementation ---------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a tool, a test): write at once
            self._flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush_held)

    def _flush_held(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self, line: bytes = b"", record_id: str | None = None) -> None:
        """Write the held opening lines and ``line`` with one system call."""
        data = b"".join(self._held) + line if self._held else line
        # An opening line whose exchange has since ended or been settled is written, but
        # not counted: its final line (or the database) stands for it.
        ids = [i for i in self._held_ids if i in self._opening]
        if record_id is not None:
            ids.append(record_id)
        lines = len(self._held) + (1 if line else 0)
        self._held.clear()
        self._held_ids.clear()
        if not data:
            return
        try:
            if self._fd is None or self._active_size >= self.segment_bytes:
                self._rotate()
            self._append(data, ids)
        except OSError as exc:
            self.failed_writes += lines
            self._warn(exc)

    @property
    def _active_seq(self) -> int:
        return self._next_seq - 1

    def _open_segment(self) -> None:
        assert self._slot is not None
        seq = self._next_seq
        path = self._slot / f"{_PREFIX}{seq:012d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._next_seq += 1
        self._active_size = 0
        self._segments[seq] = _Segment(path)

    def _rotate(self) -> None:
        if self._slot is None:
            raise OSError("the journal is not open")
        previous = self._active_seq
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_segment()
        if previous in self._segments and self._segments[previous].unsettled == 0:
            self._delete(previous)

    def _append(self, data: bytes, ids: Iterable[str]) -> None:
        assert self._fd is not None
        written = os.write(self._fd, data)
        if written != len(data):
            # Disk full part-way: cut the torn bytes off, or the next line would be glued
            # to them and both be unreadable.
            os.ftruncate(self._fd, self._active_size)
            raise OSError(f"short write to the journal ({written} of {len(data)} bytes)")
        self._active_size += written
        seq = self._active_seq
        segment = self._segments[seq]
        for record_id in ids:
            older = self._where.get(record_id)
            if older != seq:
                if older is not None:
                    self._release(older)  # a newer line of the exchange supersedes it
                self._where[record_id] = seq
                segment.unsettled += 1

    def _forget(self, record_id: str) -> None:
        self._opening.discard(record_id)
        seq = self._where.pop(record_id, None)
        if seq is not None:
            self._release(seq)

    def _release(self, seq: int) -> None:
        """One exchange fewer needs segment ``seq``; delete it once none does."""
        segment = self._segments[seq]
        segment.unsettled -= 1
        if segment.unsettled == 0 and seq != self._active_seq:
            self._delete(seq)

    def _delete(self, seq: int) -> None:
        segment = self._segments.pop(seq)
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()

    def _warn(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARNING_INTERVAL:
            self._last_warning = now
            log.warning(
                "journal %s: cannot write (%s); %d requests so far are only in memory until "
                "stored, and a kill would lose them",
                self.location,
                exc,
                self.failed_writes,
            )


def _wal_paths(slot: Path) -> list[Path]:
    paths = [p for p in slot.glob(f"{_PREFIX}*{_SUFFIX}") if p.name[4:-6].isdigit()]
    return sorted(paths, key=_seq)


def _seq(path: Path) -> int:
    return int(path.name[len(_PREFIX) : -len(_SUFFIX)])


def _read_lines(paths: Iterable[Path]) -> dict[str, bytes]:
    """The last readable line of each exchange in ``paths``, in order of first appearance."""
    lines: dict[str, bytes] = {}
    for path in paths:
        content = path.read_bytes()
        for line in content.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                log.warning("journal: skipped a torn last line in %s", path)
                continue
            try:
                exchange = decode_exchange(line)
            except ValueError as exc:
                log.warning("journal: skipped an unreadable line in %s (%s)", path, exc)
                continue
            lines[exchange.id] = line
    return lines


class _Writer(Protocol):
    def submit(self, item: Exchange) -> bool: ...


class JournaledSink:
    """What the forwarder submits to: each exchange goes to the journal, then to the writer.

    ``begin(exchange)`` notes a stream as it starts, so that a kill in its middle still
    leaves a record; ``journal(exchange)`` writes how it ended, just before the client sees
    that end; ``submit`` then files the final version without writing it again (the journal
    line stands for it until the record is safe).
    """

    def __init__(self, journal: Journal, writer: _Writer) -> None:
        self._journal = journal
        self._writer = writer

    def begin(self, exchange: Exchange) -> None:
        """Note a stream that is starting."""
        self._journal.write(exchange, opening=True)

    def journal(self, exchange: Exchange) -> None:
        """Write how the exchange ended, unless the journal holds that already."""
        if not self._journal.holds_final(exchange.id):
            self._journal.write(exchange)

    def submit(self, item: Exchange) -> bool:
        """Journal (if not yet) and queue for the writer; False if the writer refused it."""
        if not self._journal.holds_final(item.id):
            self._journal.write(item)
        if self._writer.submit(item):
            return True
        self._journal.settle([item])  # refused and counted as lost by the writer
        return False
