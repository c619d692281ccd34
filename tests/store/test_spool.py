from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.records import RequestRecord
from proxy.store.spool import Spool, decode_record, encode_record
from proxy.usage import Usage
from tests.store.factory import make_record
from tests.support.tmpfs import small_tmpfs


async def drain(spool: Spool, max_records: int = 1000) -> list[RequestRecord]:
    """Read and acknowledge everything, as the writer does once the database is back."""
    out: list[RequestRecord] = []
    while (batch := await spool.read(max_records)) is not None:
        out.extend(batch.records)
        await spool.acknowledge(batch)
    return out


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def list_dir(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("slot-*/seg-*.jsonl"))


def test_line_round_trip_keeps_exact_types() -> None:
    record = make_record(
        cost_usd=Decimal("0.000000000123"),
        usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7, reasoning_tokens=2),
        properties={"env": "prod", "ünï": "cödé"},
        ttft_ms=12.5,
        error="upstream stream broken",
    )
    line = encode_record(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b'"v":1' in line and b'"cost_usd":"1.23E-10"' in line
    assert decode_record(line) == record
    bare = make_record(usage=None, cost_usd=None, usage_source=None)
    assert decode_record(encode_record(bare)) == bare


@pytest.mark.parametrize(
    "line",
    [b"{}", b'{"v":2,"id":"x"}', b"[1]", b'{"v":1,"id":"x"}', b"\xff\xfe", b'{"v":1'],
)
def test_unreadable_lines_raise_value_error(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(line)


async def test_nothing_is_created_until_something_is_spooled(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1024**2)
    assert await spool.open() == 0
    assert await spool.read(10) is None
    await spool.close()
    assert not (tmp_path / "spool").exists()


async def test_replay_in_order_across_segments_then_delete(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024**2, segment_bytes=2000)
    records = [make_record(minutes=i) for i in range(50)]
    for start in range(0, 50, 7):
        assert await spool.append(records[start : start + 7]) == len(records[start : start + 7])
    assert spool.pending_records == 50
    assert len(segments(tmp_path)) > 3
    first = await spool.read(5)
    assert first is not None
    assert [r.id for r in first.records] == [r.id for r in records[:5]]
    again = await spool.read(5)  # not acknowledged: the same batch again
    assert again is not None and again.records == first.records
    await spool.acknowledge(first)
    await spool.acknowledge(first)  # twice is harmless
    assert [r.id for r in await drain(spool, 9)] == [r.id for r in records[5:]]
    assert spool.pending_records == 0 and spool.size_bytes == 0
    assert segments(tmp_path) == []
    await spool.close()
    assert list_dir(tmp_path) == []  # an empty slot is removed


async def test_appends_continue_in_a_new_segment_while_replaying(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024**2)
    await spool.append([make_record(minutes=1)])
    batch = await spool.read(10)  # closes the active segment
    await spool.append([make_record(minutes=2)])
    assert batch is not None
    await spool.acknowledge(batch)
    assert len(segments(tmp_path)) == 1
    assert [r.created_at.minute for r in await drain(spool)] == [2]
    await spool.close()


async def test_torn_last_line_and_corrupt_lines_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.store.spool")
    first = Spool(tmp_path, 1024**2)
    records = [make_record(minutes=i) for i in range(4)]
    await first.append(records[:2])
    await first.close()
    (path,) = segments(tmp_path)
    # A corrupt line, two good ones, then a crash in the middle of a line.
    tail = encode_record(records[2]) + encode_record(records[3])
    append_bytes(path, b'{"v":1,"garbage"\n' + tail + encode_record(make_record(minutes=9))[:40])

    second = Spool(tmp_path, 1024**2)
    assert await second.open() == 5  # lines with a newline: 4 records and the corrupt one
    assert [r.id for r in await drain(second, 3)] == [r.id for r in records]
    assert second.skipped_lines == 2
    assert "torn last line" in caplog.text and "unreadable line" in caplog.text
    assert "from an earlier run" in caplog.text
    await second.close()
    assert segments(tmp_path) == []


async def test_bounded_size_refuses_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.store.spool")
    line = len(encode_record(make_record()))
    spool = Spool(tmp_path, max_bytes=line * 10 + 5, segment_bytes=line * 3)
    assert await spool.append([make_record(minutes=i) for i in range(7)]) == 7
    assert "full" not in caplog.text
    assert await spool.append([make_record(minutes=i) for i in range(7, 14)]) == 3
    assert spool.size_bytes <= spool.max_bytes
    assert "80% full" in caplog.text or "% full" in caplog.text
    assert len(await drain(spool)) == 10
    await spool.close()


async def test_processes_sharing_a_directory_use_their_own_slots(tmp_path: Path) -> None:
    one, two = Spool(tmp_path, 1024**2), Spool(tmp_path, 1024**2)
    await one.append([make_record(minutes=1)])
    await two.append([make_record(minutes=2)])
    assert one.location != two.location
    third = Spool(tmp_path, 1024**2)
    assert await third.open() == 0  # the other slots are held: nothing to take over
    assert [r.created_at.minute for r in await drain(one)] == [1]
    assert [r.created_at.minute for r in await drain(two)] == [2]
    for spool in (one, two, third):
        await spool.close()


CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from proxy.store.spool import Spool
    from tests.store.factory import make_record

    async def main():
        spool = Spool(sys.argv[1], 1024**2)
        await spool.append([make_record(minutes=i, session_id="crash") for i in range(25)])
        print(spool.location, flush=True)
        if sys.argv[2] == "crash":
            os._exit(9)  # no close: like SIGKILL, the lock dies with the process
        sys.stdin.read()  # stay alive, holding the slot, until the test closes stdin

    asyncio.run(main())
    """
)


def run_writer(directory: Path, mode: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", CRASHING_WRITER, str(directory), mode]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def test_a_crashed_process_spool_is_replayed_by_the_next_one(tmp_path: Path) -> None:
    with run_writer(tmp_path, "live") as live:
        assert live.stdout is not None
        live_slot = (await asyncio.to_thread(live.stdout.readline)).decode().strip()
        with run_writer(tmp_path, "crash") as crashed:
            assert await asyncio.to_thread(crashed.wait, 30) == 9
        successor = Spool(tmp_path, 1024**2)
        assert await successor.open() == 25  # the crashed one's records, not the live one's
        assert successor.location != Path(live_slot)
        replayed = await drain(successor)
        assert len(replayed) == 25 and len({r.id for r in replayed}) == 25
        await successor.close()
        assert (await asyncio.to_thread(live.communicate, b"", 30))[0] == b""
    assert len(segments(tmp_path)) == 1  # the live process left its own spool behind


# -- a disk that fills, and appends that fail part-way --------------------------------------


def on_disk(directory: Path) -> tuple[int, int]:
    """Bytes and newlines in the segment files, as replay would find them."""
    contents = [path.read_bytes() for path in segments(directory)]
    return sum(len(c) for c in contents), sum(c.count(b"\n") for c in contents)


async def fill(spool: Spool, batches: int, per_batch: int) -> tuple[list[RequestRecord], int]:
    """Append until the disk refuses; the records kept, and how many batches were cut short."""
    kept: list[RequestRecord] = []
    short = 0
    for batch_number in range(batches):
        batch = [make_record(minutes=batch_number, session_id=f"b{i}") for i in range(per_batch)]
        count = await spool.append(batch)
        kept.extend(batch[:count])
        short += count < len(batch)
    return kept, short


async def test_a_full_disk_refuses_whole_records_and_leaves_no_stray_bytes(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "disk", 96 * 1024) as disk:
        spool = Spool(disk, 1024**3)  # the bound is far beyond the disk: the disk refuses
        kept, short = await fill(spool, batches=40, per_batch=37)
        assert short > 0 and 0 < len(kept) < 40 * 37  # the disk did fill
        assert isinstance(spool.last_error, OSError) and spool.last_error.errno == 28
        # Exactly what the spool counted is on disk: no half line, no refused record.
        assert on_disk(disk) == (spool.size_bytes, spool.pending_records)
        assert spool.pending_records == len(kept)
        await spool.close()

        successor = Spool(disk, 1024**3)
        assert await successor.open() == len(kept)
        replayed = await drain(successor)
        assert [r.id for r in replayed] == [r.id for r in kept]  # none lost, no phantom
        assert successor.skipped_lines == 0
        # Room again once replayed: the next append takes everything.
        assert await successor.append([make_record(minutes=99)]) == 1
        assert successor.last_error is None
        await successor.close()


async def test_appends_keep_going_in_the_same_segment_after_a_failure(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", 64 * 1024) as disk:
        spool = Spool(disk, 1024**3)
        kept, _ = await fill(spool, batches=30, per_batch=40)
        batch = await spool.read(10**6)  # replay frees the space...
        assert batch is not None and len(batch.records) == len(kept)
        await spool.acknowledge(batch)
        more, short = await fill(spool, batches=3, per_batch=5)  # ...and appends work again
        assert short == 0 and len(more) == 15
        assert [r.id for r in await drain(spool)] == [r.id for r in more]
        await spool.close()


class FailingDisk:
    """``os.write``/``os.fsync``/``os.ftruncate`` as a failing disk does them, on the spool's
    descriptor only: a write that takes ``take`` bytes then raises, an fsync that raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, spool: Spool) -> None:
        self.spool = spool
        self.take: int | None = None
        self.fail_fsync = False
        self.fail_truncate = False
        real_write, real_fsync, real_truncate = os.write, os.fsync, os.ftruncate

        def write(fd: int, data: Any) -> int:
            if fd != spool._active or self.take is None:
                return real_write(fd, data)
            if self.take == 0:
                raise OSError(errno.EIO, "injected I/O error")
            written = real_write(fd, bytes(data[: self.take]))
            self.take = 0  # the next call (the rest of the data) fails
            return written

        def fsync(fd: int) -> None:
            if fd == spool._active and self.fail_fsync:
                raise OSError(errno.EIO, "injected fsync error")
            real_fsync(fd)

        def ftruncate(fd: int, length: int) -> None:
            if fd == spool._active and self.fail_truncate:
                raise OSError(errno.EIO, "injected ftruncate error")
            real_truncate(fd, length)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "ftruncate", ftruncate)


@pytest.mark.parametrize("cut_at_line", [0, 1, 2.5, 4.2])
async def test_a_write_failing_part_way_keeps_only_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut_at_line: float
) -> None:
    spool = Spool(tmp_path, 1024**2)
    before = [make_record(minutes=i) for i in range(3)]
    assert await spool.append(before) == 3
    disk = FailingDisk(monkeypatch, spool)
    batch = [make_record(minutes=10 + i) for i in range(6)]
    line = len(encode_record(batch[0]))
    disk.take = int(line * cut_at_line)
    kept = await spool.append(batch)
    assert kept == int(cut_at_line)  # the whole lines that made it; the rest is refused
    disk.take = None
    after = [make_record(minutes=20)]
    assert await spool.append(after) == 1
    assert on_disk(tmp_path) == (spool.size_bytes, spool.pending_records)
    expected = before + batch[:kept] + after
    assert [r.id for r in await drain(spool)] == [r.id for r in expected]
    assert spool.skipped_lines == 0
    await spool.close()


async def test_a_failed_fsync_refuses_the_whole_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, 1024**2)
    before = [make_record(minutes=1)]
    await spool.append(before)
    disk = FailingDisk(monkeypatch, spool)
    disk.fail_fsync = True
    assert await spool.append([make_record(minutes=i) for i in range(5)]) == 0
    assert on_disk(tmp_path) == (spool.size_bytes, 1)
    disk.fail_fsync = False
    assert [r.id for r in await drain(spool)] == [before[0].id]
    await spool.close()


async def test_when_the_cut_back_fails_too_replay_reads_every_whole_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The file's end is unknown: the spool counts what the file holds, replay reads the
    whole lines (the caller also retries them: inserts are idempotent) and skips the torn one;
    the segment is not deleted with records unread."""
    caplog.set_level(logging.WARNING, logger="proxy.store.spool")
    spool = Spool(tmp_path, 1024**2)
    before = [make_record(minutes=1)]
    await spool.append(before)
    disk = FailingDisk(monkeypatch, spool)
    batch = [make_record(minutes=10 + i) for i in range(4)]
    disk.take = len(encode_record(batch[0])) * 2 + 17
    disk.fail_truncate = True
    assert await spool.append(batch) == 0
    assert "cannot cut" in caplog.text
    disk.take, disk.fail_truncate = None, False
    after = [make_record(minutes=30)]
    assert await spool.append(after) == 1  # in a new segment: the old one is not trusted
    replayed = [r.id for r in await drain(spool)]
    assert replayed == [r.id for r in before + batch[:2] + after]
    assert spool.skipped_lines == 1  # the torn third line
    await spool.close()
    assert segments(tmp_path) == []


async def test_a_record_after_torn_bytes_is_still_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a failed append used to leave mid-segment (the start of a line, then the next
    append's whole lines) costs only the torn line, not the record written after it."""
    caplog.set_level(logging.WARNING, logger="proxy.store.spool")
    first = Spool(tmp_path, 1024**2)
    records = [make_record(minutes=i, properties={"v": "1"}) for i in range(4)]
    await first.append(records[:1])
    await first.close()
    (path,) = segments(tmp_path)
    torn = encode_record(make_record(minutes=9, properties={"v": "1"}))[:400]
    lines = [encode_record(r) for r in records[1:]]
    append_bytes(path, torn + lines[0] + lines[1] + b'{"v":1,"garbage"' + lines[2])
    second = Spool(tmp_path, 1024**2)
    assert await second.open() == 4
    assert [r.id for r in await drain(second)] == [r.id for r in records]
    assert second.skipped_lines == 2
    assert "torn bytes before a record" in caplog.text
    await second.close()
