"""The local spool: records wait here, on disk, while the database cannot take them.

Layout: ``<spool_dir>/slot-<n>/seg-<seq>.jsonl``. Each process holds one slot through an
exclusive ``flock`` on ``slot-<n>/LOCK`` (``proxy.store.slots``) for as long as it runs, so
replicas and ``--workers`` sharing a host (and a spool directory) never append to or replay
the same file. The lock dies with its process: a slot left by a crash is free again, and the
next process that opens the spool moves its segments into its own slot and replays them.

A segment is append-only JSON lines, one record per line, each line versioned
(``{"v": 1, ...}``; money as a decimal string, times as ISO-8601). Appends are written and
``fsync``'d once per batch, with ``os.write`` on a raw descriptor: no userspace buffer can keep
half a batch to be flushed later. An append that fails part-way (disk full, I/O error) is cut
back to its last whole line with ``ftruncate`` before it returns, so a segment only ever holds
the lines the spool counted; the records of the lines cut are refused, for the caller to keep
and offer again. Segments roll over at ``segment_bytes`` and are read oldest first;
one is deleted once every record in it is in the database. Replay is at-least-once: after a
crash a segment is replayed from its start, which the writer's inserts (idempotent on the
record id) make harmless. A torn last line, or any unreadable line, is skipped with a warning.

The total size is bounded by ``max_bytes``; records that do not fit are refused, as are those a
full disk does not take: ``append`` says how many it kept. A warning is logged when the spool
passes 80% of its bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import typing
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from proxy.records import RequestRecord
from proxy.store.slots import MAX_SLOTS, SlotError, acquire_slot, lock_slot, release_slot, slot_dirs
from proxy.usage import Usage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NEAR_FULL = 0.8
_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".jsonl"


class SpoolError(OSError):
    """The spool directory cannot be used (no free slot, not writable)."""


def encode_record(record: RequestRecord) -> bytes:
    """One spool line (with its newline) for ``record``."""
    line: dict[str, Any] = {"v": FORMAT_VERSION}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Usage):
            value = dataclasses.asdict(value)
        line[field.name] = value
    return orjson.dumps(line) + b"\n"


def decode_record(line: bytes) -> RequestRecord:
    """The record of one spool line; raises ``ValueError`` on anything it cannot read."""
    data = orjson.loads(line)
    if not isinstance(data, dict) or data.pop("v", None) != FORMAT_VERSION:
        raise ValueError("not a version 1 spool line")
    values: dict[str, Any] = {}
    for name, kind in _field_kinds().items():
        if name not in data:
            continue
        value = data[name]
        if value is not None and kind is datetime:
            value = datetime.fromisoformat(value)
        elif value is not None and kind is Decimal:
            value = Decimal(value)
        elif value is not None and kind is Usage:
            value = Usage(**value)
        values[name] = value
    try:
        return RequestRecord(**values)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


@functools.cache
def _field_kinds() -> dict[str, type | None]:
    """For each ``RequestRecord`` field, the type its JSON value must be turned back into."""
    hints = typing.get_type_hints(RequestRecord)
    kinds: dict[str, type | None] = {}
    for field in dataclasses.fields(RequestRecord):
        args = typing.get_args(hints[field.name]) or (hints[field.name],)
        kinds[field.name] = next((k for k in (datetime, Decimal, Usage) if k in args), None)
    return kinds


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Records read from one segment, from ``start`` up to ``end`` (byte offsets)."""

    segment: Path
    start: int
    end: int
    records: list[RequestRecord]


@dataclass(slots=True)
class _Segment:
    path: Path
    size: int
    records: int
    read_offset: int = 0
    checked_to: int = 0  # unreadable lines before this offset are counted already


class Spool:
    """An append-only, size-bounded record spool in ``directory``, owned by this process.

    Nothing is created on disk until the first ``append`` (or until ``open`` finds segments
    left by an earlier run). The async methods do their file work in a worker thread and are
    serialized by a lock, so the writer may append and replay concurrently.
    """

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, *, segment_bytes: int | None = None
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(max(max_bytes // 16, 64 * 1024), 64 * 1024**2)
        self._lock = asyncio.Lock()
        self._slot: Path | None = None
        self._lock_file: BinaryIO | None = None
        self._segments: list[_Segment] = []
        self._active: int | None = None  # descriptor of the last segment, open for appends
        self._next_seq = 0
        self._warned_near_full = False
        self.skipped_lines = 0
        """Unreadable lines met during replay (torn by a crash, or corrupt)."""
        self.last_error: OSError | None = None
        """Why the last append that failed did (disk full...); None after one that succeeded."""

    # -- state ------------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        """Records in the spool that are not yet acknowledged as written to the database."""
        return sum(s.records for s in self._segments)

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def location(self) -> Path:
        return self._slot or self.directory

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> int:
        """Take over what earlier runs left (own slot and crashed processes' slots).

        Returns how many records are waiting to be replayed.
        """
        async with self._lock:
            await asyncio.to_thread(self._open_sync)
        pending = self.pending_records
        if pending:
            log.warning(
                "spool %s holds %d records (%d bytes) from an earlier run; replaying them",
                self.location,
                pending,
                self.size_bytes,
            )
        return pending

    async def close(self) -> None:
        """Close the active segment and release the slot; an empty slot is removed."""
        async with self._lock:
            await asyncio.to_thread(self._close_sync)

    # -- writing ----------------------------------------------------------------------------

    async def append(self, records: list[RequestRecord]) -> int:
        """Append ``records`` and fsync; returns how many were kept, a prefix of ``records``.

        The rest is refused: beyond ``max_bytes``, or not written because the disk is full or
        failing (then ``last_error`` says why, and the segment is as it was before).
        """
        if not records:
            return 0
        lines = [encode_record(r) for r in records]
        async with self._lock:
            return await asyncio.to_thread(self._append_sync, lines)

    # -- replaying --------------------------------------------------------------------------

    async def read(self, max_records: int) -> SpoolBatch | None:
        """The next unacknowledged records of the oldest segment, or None when empty."""
        async with self._lock:
            return await asyncio.to_thread(self._read_sync, max_records)

    async def acknowledge(self, batch: SpoolBatch) -> None:
        """``batch`` is in the database: advance past it, delete its segment once done."""
        async with self._lock:
            await asyncio.to_thread(self._acknowledge_sync, batch)

    # -- implementation (worker thread, under the lock) -------------------------------------

    def _open_sync(self) -> None:
        if not self.directory.is_dir():
            return  # nothing left behind; the directory is made on the first append
        orphans = [p for p in slot_dirs(self.directory) if _segment_paths(p)]
        if not orphans:
            return
        self._acquire_slot()
        for slot in orphans:
            if slot != self._slot:
                self._adopt(slot)

    def _acquire_slot(self) -> None:
        if self._slot is not None:
            return
        try:
            self._slot, self._lock_file = acquire_slot(self.directory)
        except SlotError:
            raise SpoolError(
                f"no free slot in the spool directory {self.directory} ({MAX_SLOTS} processes "
                "hold one each): give each group of processes its own database.spool_dir"
            ) from None
        for path in _segment_paths(self._slot):  # left by the slot's previous owner
            self._add_existing(path)

    def _adopt(self, slot: Path) -> None:
        """Move the segments of a slot whose process is gone into ours."""
        lock_file = lock_slot(slot, create=False)
        if lock_file is None:
            return  # a live process owns it
        assert self._slot is not None
        try:
            paths = _segment_paths(slot)
            for segment in paths:
                target = self._slot / _segment_name(self._take_seq())
                os.rename(segment, target)
                self._add_existing(target)
            if paths:
                _fsync_dir(self._slot)
                log.info("spool: took over %d segments left in %s", len(paths), slot)
        finally:
            release_slot(slot, lock_file, remove=True)

    def _add_existing(self, path: Path) -> None:
        content = path.read_bytes()
        self._segments.append(_Segment(path, len(content), content.count(b"\n")))
        self._next_seq = max(self._next_seq, _segment_seq(path) + 1)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _append_sync(self, lines: list[bytes]) -> int:
        self._acquire_slot()
        room = self.max_bytes - self.size_bytes
        fitting: list[bytes] = []
        for line in lines:
            if len(line) > room:
                break
            fitting.append(line)
            room -= len(line)
        kept = 0
        if fitting:
            try:
                active = self._active_segment()
            except OSError as exc:  # cannot even create a segment: nothing was written
                self.last_error = exc
                return 0
            kept = self._write_lines(active, fitting)
            if active.size >= self.segment_bytes:
                self._close_active()
        self._check_near_full()
        return kept

    def _write_lines(self, segment: _Segment, lines: list[bytes]) -> int:
        """Write and fsync ``lines`` at the end of ``segment``; how many are on disk.

        On a failure the file is cut back to the last whole line written (or, when the
        fsync failed, to where it was before): the segment never holds a byte the spool
        does not count, which replay would read as a record or as garbage.
        """
        assert self._active is not None
        data = memoryview(b"".join(lines))
        written = 0
        try:
            while written < len(data):
                written += os.write(self._active, data[written:])
        except OSError as exc:
            self.last_error = exc
            keep, count = _whole_lines(lines, written)
            return count if self._cut_back(segment, keep, count) else 0
        try:
            os.fsync(self._active)
        except OSError as exc:  # what the page cache held may be gone: trust none of it
            self.last_error = exc
            self._cut_back(segment, 0, 0)
            return 0
        self.last_error = None
        segment.size += len(data)
        segment.records += len(lines)
        return len(lines)

    def _cut_back(self, segment: _Segment, keep: int, count: int) -> bool:
        """Truncate the active segment to its counted size plus ``keep`` new bytes (``count``
        whole lines), made durable; True when it worked and those lines now count."""
        assert self._active is not None
        try:
            os.ftruncate(self._active, segment.size + keep)
            if keep:
                os.fsync(self._active)
        except OSError as exc:
            # The file's end is unknown now: count what it really holds, so replay reads
            # every whole line (a line refused here may be replayed as well as retried by
            # the caller: inserts are idempotent) and skips a torn one.
            log.error("spool: cannot cut %s back after a failed append (%s)", segment.path, exc)
            self._close_active()  # and never append to it again
            self._recount(segment)
            return False
        segment.size += keep
        segment.records += count
        return True

    def _recount(self, segment: _Segment) -> None:
        try:
            content = segment.path.read_bytes()
        except OSError:
            return  # unreadable too: replay will find out what is left, line by line
        segment.size = len(content)
        segment.records = content.count(b"\n")  # the active segment: none read yet

    def _active_segment(self) -> _Segment:
        if self._active is None:
            assert self._slot is not None
            path = self._slot / _segment_name(self._take_seq())
            # O_APPEND: after a cut-back (ftruncate) the next write lands at the new end.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                _fsync_dir(self._slot)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            self._active = fd
            self._segments.append(_Segment(path, 0, 0))
        return self._segments[-1]

    def _close_active(self) -> None:
        if self._active is not None:
            with contextlib.suppress(OSError):  # appends were fsync'd: nothing is pending
                os.close(self._active)
            self._active = None

    def _check_near_full(self) -> None:
        used = self.size_bytes / self.max_bytes
        if used >= NEAR_FULL and not self._warned_near_full:
            self._warned_near_full = True
            log.warning(
                "spool %s is %.0f%% full (%d of %d bytes, %d records): records beyond the "
                "bound will be lost; is the database reachable? (database.spool_max_bytes)",
                self.location,
                used * 100,
                self.size_bytes,
                self.max_bytes,
                self.pending_records,
            )
        elif used < NEAR_FULL / 2:
            self._warned_near_full = False

    def _read_sync(self, max_records: int) -> SpoolBatch | None:
        while self._segments:
            segment = self._segments[0]
            if len(self._segments) == 1 and self._active is not None:
                self._close_active()  # the writer continues in a new segment
            batch = self._read_segment(segment, max_records)
            if batch.records or batch.end < segment.size:
                return batch
            self._delete(segment)  # only unreadable lines were left
        return None

    def _read_segment(self, segment: _Segment, max_records: int) -> SpoolBatch:
        records: list[RequestRecord] = []
        with open(segment.path, "rb") as file:
            file.seek(segment.read_offset)
            offset = segment.read_offset
            while len(records) < max_records and offset < segment.size:
                # Never past the counted size: what lies beyond was not appended by us.
                line = file.readline(segment.size - offset)
                start, offset = offset, offset + len(line)
                if not line.endswith(b"\n"):
                    self._skip(segment, start, "a torn last line", counted=False)
                    offset = segment.size
                    break
                try:
                    records.append(decode_record(line))
                except ValueError as exc:
                    after_tear = _record_after_a_tear(line)
                    if after_tear is None:
                        self._skip(segment, start, f"an unreadable line ({exc})", counted=True)
                    else:
                        records.append(after_tear)
                        self._skip(segment, start, "torn bytes before a record", counted=False)
        segment.checked_to = max(segment.checked_to, offset)
        return SpoolBatch(segment.path, segment.read_offset, offset, records)

    def _skip(self, segment: _Segment, start: int, what: str, *, counted: bool) -> None:
        """Step over a line; ``counted`` when its newline made it count as a record."""
        if start < segment.checked_to:
            return  # seen on an earlier read of the same batch
        self.skipped_lines += 1
        if counted:
            segment.records = max(0, segment.records - 1)
        log.warning("spool: skipped %s in %s", what, segment.path)

    def _acknowledge_sync(self, batch: SpoolBatch) -> None:
        segment = next((s for s in self._segments if s.path == batch.segment), None)
        if segment is None or segment.read_offset != batch.start:
            return  # acknowledged already
        segment.read_offset = batch.end
        segment.records = max(0, segment.records - len(batch.records))
        if batch.end >= segment.size and not (
            self._active is not None and segment is self._segments[-1]
        ):
            self._delete(segment)

    def _delete(self, segment: _Segment) -> None:
        self._segments.remove(segment)
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()

    def _close_sync(self) -> None:
        self._close_active()
        if self._slot is None or self._lock_file is None:
            return
        if not self._segments:
            for path in _segment_paths(self._slot):
                path.unlink()
            release_slot(self._slot, self._lock_file, remove=True)
        else:
            release_slot(self._slot, self._lock_file)
            log.warning(
                "spool %s keeps %d records for the next start to replay",
                self._slot,
                self.pending_records,
            )
        self._slot = self._lock_file = None


def _record_after_a_tear(line: bytes) -> RequestRecord | None:
    """The record at the end of a line whose start is the torn rest of another (a segment
    written before appends were cut back on failure, or one whose cut-back failed). A line's
    JSON escapes the quotes in its strings, so ``{"v":`` starts either a record or a nested
    object (a property named ``v``), which does not decode as a whole line."""
    start = line.find(b'{"v":', 1)
    while start > 0:
        try:
            return decode_record(line[start:])
        except ValueError:
            start = line.find(b'{"v":', start + 1)
    return None


def _whole_lines(lines: list[bytes], written: int) -> tuple[int, int]:
    """Bytes and count of the leading ``lines`` that fit entirely in ``written`` bytes."""
    size = count = 0
    for line in lines:
        if size + len(line) > written:
            break
        size += len(line)
        count += 1
    return size, count


def _segment_name(seq: int) -> str:
    return f"{_SEGMENT_PREFIX}{seq:012d}{_SEGMENT_SUFFIX}"


def _segment_seq(path: Path) -> int:
    return int(path.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)])


def _segment_paths(slot: Path) -> list[Path]:
    paths = [
        p
        for p in slot.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")
        if p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)].isdigit()
    ]
    return sorted(paths, key=_segment_seq)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
