"""The write-ahead journal: lines, rotation, deletion once safe, recovery of dead slots."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.pricing import Cost
from proxy.records import Exchange, RequestRecord
from proxy.store.engine import create_engine
from proxy.store.journal import (
    ESTIMATE_LOST,
    KILLED_MID_STREAM,
    Journal,
    JournaledSink,
    decode_exchange,
    encode_exchange,
)
from proxy.store.migrate import upgrade_database
from proxy.store.spool import Spool
from proxy.store.writer import RecordWriter
from proxy.usage import Usage
from tests.resilience.load import until
from tests.store.factory import identity, make_record


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """The journal's directory, inside the test's own (the journal removes it when done)."""
    return tmp_path / "journal"


T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def exchange(record_id: str, **fields: object) -> Exchange:
    values: dict[str, object] = {
        "id": record_id, "created_at": T0, "method": "POST",
        "endpoint": "/v1/chat/completions", "upstream": "http://upstream", "stream": True,
        "model": "gpt-4o-mini", "session_id": "s1", "user_id": "ü-user",
        "properties": {"team": "a"}, "key_id": "k1", "status_code": 200,
        "response_model": "gpt-4o-mini-2024-07-18", "completed": True, "latency_ms": 12.5,
        "provider_usage": Usage(prompt_tokens=9, completion_tokens=6, total_tokens=15),
        "cost": Cost(Decimal("0.0000123"), "builtin", "2026-01", "gpt-4o-mini"),
        "session_path": "/plan/search/2", "session_name": "Trip planner",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
        "downgraded_from": "gpt-4o",
    }  # fmt: skip
    values.update(fields)
    return Exchange(**values)  # type: ignore[arg-type]


def wal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("slot-*/wal-*.jsonl"))


def lines_in(directory: Path) -> list[bytes]:
    return [line for path in wal_files(directory) for line in path.read_bytes().splitlines()]


def test_a_line_keeps_what_the_record_needs_and_nothing_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    secret = exchange(
        "r1", request_body={"messages": [{"content": "my secret prompt"}]},
        completion_text="the secret answer", tool_calls=2, tool_results=3,
    )  # fmt: skip
    journal.write(secret)
    [line] = lines_in(tmp_path)
    assert b"secret" not in line
    back = decode_exchange(line + b"\n")
    for name in ("id", "created_at", "user_id", "properties", "provider_usage", "cost",
                 "completed", "latency_ms", "status_code", "key_id", "response_model",
                 "session_path", "session_name", "trace_id", "span_id", "tool_calls",
                 "tool_results", "downgraded_from"):  # fmt: skip
        assert getattr(back, name) == getattr(secret, name), name
    assert back.request_body is None and back.completion_text == "" and back.error is None
    journal.close()


def test_a_repaired_usage_stays_repaired() -> None:
    back = decode_exchange(
        encode_exchange(exchange("r1", provider_usage=Usage(5, 0, 5, repaired=True)))
    )
    assert back.provider_usage == Usage(5, 0, 5, repaired=True)


def test_a_line_written_before_session_paths_is_still_read() -> None:
    """A journal left by the previous release (22 fields) is recovered after an upgrade."""
    line = (
        b'[1,"r1","2026-01-02T03:04:05.678000+00:00","POST","/v1/chat/completions",'
        b'"http://upstream",null,false,"gpt-4o-mini","s1",null,{},null,200,"gpt-4o-mini",'
        b"[9,6,15,0,0,0,0,0],null,true,12.5,null,null,false]\n"
    )
    back = decode_exchange(line)
    assert (back.id, back.session_id, back.provider_usage) == ("r1", "s1", Usage(9, 6, 15))
    assert (back.session_path, back.trace_id, back.tool_calls) == (None, None, 0)
    with pytest.raises(ValueError):
        decode_exchange(line.replace(b"false]", b"false,null]"))


def test_an_answer_that_needed_an_estimate_says_it_was_lost(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.write(exchange("r1", provider_usage=None, cost=None, request_body={"messages": []}))
    journal.write(exchange("r2", provider_usage=None, cost=None, request_body=None))
    first, second = (decode_exchange(line + b"\n") for line in lines_in(tmp_path))
    assert first.error == ESTIMATE_LOST and first.provider_usage is None
    assert second.error is None  # nothing to estimate (e.g. GET /v1/models)
    journal.close()


def test_segments_rotate_and_go_once_every_exchange_in_them_is_safe(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=1000)
    journal.open()
    exchanges = [exchange(f"r{i:03d}") for i in range(12)]
    for item in exchanges:
        journal.write(item)
    files = wal_files(tmp_path)
    assert len(files) >= 3
    first_segment = {
        decode_exchange(line + b"\n").id for line in files[0].read_bytes().splitlines()
    }
    in_first = [e for e in exchanges if e.id in first_segment]
    journal.settle(in_first[:-1])
    assert files[0].exists()  # one exchange of it is not safe yet
    journal.settle(in_first[-1:])
    assert not files[0].exists()
    journal.settle(exchanges)
    assert wal_files(tmp_path) == [files[-1]]  # the active segment stays, until close
    assert journal.unsettled == 0
    journal.close()
    assert not tmp_path.exists()  # the journal directory goes with its last slot


def test_close_keeps_what_is_unsettled_and_the_next_open_recovers_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.write(exchange("stored"))
    journal.write(exchange("not-stored"))
    journal.settle([exchange("stored")])
    journal.close()
    again = Journal(tmp_path)
    # The whole segment is replayed: the stored one again too, which its id makes harmless.
    recovered = again.open()
    assert sorted(e.id for e in recovered) == ["not-stored", "stored"]
    assert again.unsettled == 2  # copied into the new journal until they are safe
    again.settle(recovered)
    again.close()
    assert not tmp_path.exists()  # the journal directory goes with its last slot


def test_a_torn_last_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.write(exchange("whole"))
    journal.write(exchange("torn"))
    journal.close()
    [path] = wal_files(tmp_path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) - 20])  # a kill in the middle of a write
    again = Journal(tmp_path)
    assert [e.id for e in again.open()] == ["whole"]
    assert "torn last line" in caplog.text
    again.close()


def test_the_same_exchange_journaled_twice_is_recovered_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.write(exchange("r1", completed=False))
    journal.write(exchange("r1", completed=True))
    assert journal.unsettled == 1
    journal.close()
    again = Journal(tmp_path)
    [recovered] = again.open()
    assert recovered.completed
    again.close()


_KILLED_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
from proxy.records import Exchange
from proxy.store.journal import Journal
journal = Journal(sys.argv[1])
journal.open()
for i in range(int(sys.argv[2])):
    journal.write(Exchange(
        id=f"dead-{i}", created_at=datetime.now(UTC), method="POST",
        endpoint="/v1/chat/completions", upstream="http://u", stream=False, model="m",
        session_id=None, user_id=None, properties={}, status_code=200, completed=True,
    ))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_slot_of_a_killed_process_is_adopted_and_a_live_one_is_not(tmp_path: Path) -> None:
    live = Journal(tmp_path)
    live.open()
    live.write(exchange("live-1"))
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(tmp_path), "5"],
        check=False,
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    slots_before = sorted(p.name for p in tmp_path.iterdir())
    assert len(slots_before) == 2
    successor = Journal(tmp_path)
    recovered = successor.open()
    assert sorted(e.id for e in recovered) == [f"dead-{i}" for i in range(5)]
    assert successor.recovered_total == 5
    # The dead slot is gone (its lines now in the successor's); the live one is untouched.
    assert len(list(tmp_path.iterdir())) == 2
    assert any(b"live-1" in path.read_bytes() for path in wal_files(tmp_path))
    successor.settle(recovered)
    successor.close()
    live.settle([exchange("live-1")])
    live.close()
    assert not tmp_path.exists()  # the journal directory goes with its last slot


def test_a_stream_killed_in_its_middle_is_recovered_as_such(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = JournaledSink(journal, ListWriter(accept=True))
    cut = exchange("cut", completed=False, provider_usage=None, cost=None)
    ended = exchange("ended", completed=False, provider_usage=None, cost=None)
    sink.begin(cut)
    sink.begin(ended)
    ended.completed, ended.provider_usage = True, Usage(total_tokens=15)
    sink.journal(ended)  # supersedes its opening line
    journal.close()
    again = Journal(tmp_path)
    recovered = {e.id: e for e in again.open()}
    assert recovered["cut"].error == KILLED_MID_STREAM
    assert recovered["ended"].error is None and recovered["ended"].provider_usage == Usage(
        total_tokens=15
    )
    again.settle(recovered.values())
    again.close()


async def test_opening_lines_are_written_by_the_next_write_or_loop_iteration(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = JournaledSink(journal, ListWriter(accept=True))
    sink.begin(exchange("s1", completed=False))
    sink.begin(exchange("s2", completed=False))
    assert lines_in(tmp_path) == []  # nothing ends for a client before the loop turns
    sink.submit(exchange("b1"))  # one write carries the two opening lines and this one
    assert [decode_exchange(line + b"\n").id for line in lines_in(tmp_path)] == ["s1", "s2", "b1"]
    sink.begin(exchange("s3", completed=False))
    await asyncio.sleep(0)
    assert len(lines_in(tmp_path)) == 4 and journal.unsettled == 4
    journal.settle([exchange(i) for i in ("s1", "s2", "s3", "b1")])
    journal.close()


class ListWriter:
    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.items: list[Exchange] = []

    def submit(self, item: Exchange) -> bool:
        self.items.append(item)
        return self.accept


def test_the_sink_journals_once_and_lets_go_of_what_the_writer_refuses(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = JournaledSink(journal, ListWriter(accept=True))
    item = exchange("early")
    sink.journal(item)
    item.latency_ms = 99.0
    assert sink.submit(item)
    assert len(lines_in(tmp_path)) == 1 and journal.unsettled == 1
    refusing = JournaledSink(journal, ListWriter(accept=False))
    assert not refusing.submit(exchange("refused"))
    assert "refused" not in journal and journal.unsettled == 1
    journal.settle([item])
    journal.close()


def test_a_full_disk_costs_the_journal_line_not_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        journal = Journal(disk, segment_bytes=10**9)
        journal.open()
        writer = ListWriter(accept=True)
        sink = JournaledSink(journal, writer)
        for i in range(400):
            assert sink.submit(exchange(f"r{i:04d}", properties={"pad": "x" * 200}))
        assert len(writer.items) == 400
        assert journal.failed_writes > 0
        assert "cannot write" in caplog.text
        # What did fit is whole: every line reads back, none is torn.
        lines = lines_in(disk)
        assert len(lines) == 400 - journal.failed_writes
        assert all(decode_exchange(line + b"\n") for line in lines)
        journal.settle(writer.items)
        journal.close()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


async def test_the_writer_settles_what_is_spooled_stored_or_refused_for_good(
    database_url: str, tmp_path: Path
) -> None:
    settled: list[str] = []
    engine = create_engine(database_url)  # no tables yet: every write fails, as if it were down
    writer: RecordWriter[RequestRecord] = RecordWriter(
        engine,
        identity,
        spool=Spool(tmp_path / "spool", 1024**2),
        on_settled=lambda records: settled.extend(r.id for r in records),
    )
    await writer.start()
    try:
        spooled = [make_record(minutes=i) for i in range(5)]
        for record in spooled:
            writer.submit(record)
        await until(lambda: writer.spooled_total == 5)
        assert sorted(settled) == sorted(r.id for r in spooled)  # fsync'd in the spool
        await upgrade_database(engine)
        await until(lambda: writer.replayed_total == 5)
        settled.clear()
        stored, refused = make_record(minutes=7), make_record(minutes=8, cost_usd=0.1)
        writer.submit(refused)  # a float for money: the database refuses it for good
        writer.submit(stored)
        await until(lambda: {stored.id, refused.id} <= set(settled))
        assert writer.dropped_total == 1
    finally:
        await writer.stop(timeout=5)
        await engine.dispose()


def test_an_unusable_directory_costs_the_journal_not_the_proxy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.mkdir(parents=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    journal = Journal(blocker / "journal")
    assert journal.open() == []
    assert "serving without a journal" in caplog.text
    writer = ListWriter(accept=True)
    assert JournaledSink(journal, writer).submit(exchange("r1"))
    assert writer.items and journal.failed_writes == 1
    journal.close()
