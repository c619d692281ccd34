"""SSE splitting over arbitrary chunk boundaries, and single-event parsing."""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.sse import SSESplitter, event_fields, parse_event_json

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
SSE_FILES = sorted(
    path.relative_to(PAYLOADS).as_posix()
    for directory in ("openai", "anthropic", "compat")
    for path in (PAYLOADS / directory).glob("*.sse")
)


def split_all(data: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    """Feed ``data`` cut at ``cuts``; return the events and the remainder."""
    splitter = SSESplitter()
    events: list[bytes] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in pairwise(bounds):
        events += splitter.feed(data[start:end])
    return events, splitter.remainder()


@pytest.mark.parametrize("name", SSE_FILES)
def test_recorded_stream_splits_into_its_events(name: str) -> None:
    raw = (PAYLOADS / name).read_bytes()
    events, rest = split_all(raw, [])
    assert b"".join(events) + rest == raw
    assert events, "a recorded stream has events"
    for event in events:
        _, data = event_fields(event)
        assert data is not None
    # Every event but [DONE] carries one JSON object.
    parsed = [parse_event_json(event_fields(event)[1] or "") for event in events]
    assert all(body is not None for body in parsed if body is not None)
    assert sum(body is None for body in parsed) <= 1


@pytest.mark.parametrize("name", SSE_FILES)
@given(data=st.data())
def test_recorded_stream_any_chunking_gives_same_events(name: str, data: st.DataObject) -> None:
    raw = (PAYLOADS / name).read_bytes()
    expected = split_all(raw, [])
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=40))
    assert split_all(raw, cuts) == expected


def test_one_byte_at_a_time() -> None:
    raw = (PAYLOADS / "anthropic/message_stream.sse").read_bytes()
    assert split_all(raw, list(range(len(raw)))) == split_all(raw, [])


line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    min_size=1,
    max_size=12,
)
terminator = st.sampled_from(["\n", "\r\n", "\r"])


def _event(lines: list[tuple[str, str]], blank: str) -> str:
    if lines[-1][1] == "\r" and blank == "\n":
        # CR then LF is one CRLF line end, not a line end plus a blank line.
        blank = "\r\n"
    return "".join(text + end for text, end in lines) + blank


event_strategy = st.builds(
    _event, st.lists(st.tuples(line_text, terminator), min_size=1, max_size=4), terminator
)


@given(
    events=st.lists(event_strategy, max_size=8),
    tail=st.sampled_from(["", "data: partial", "data: x\r", "data: y\n"]),
    data=st.data(),
)
def test_generated_streams_with_mixed_line_endings(
    events: list[str], tail: str, data: st.DataObject
) -> None:
    raw_events = [event.encode() for event in events]
    raw = b"".join(raw_events) + tail.encode()
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=20))
    got, rest = split_all(raw, cuts)
    expected = list(raw_events)
    # A stream that stops right after a lone CR may still be waiting for its LF.
    if expected and not tail and expected[-1].endswith(b"\r"):
        held = expected.pop()
        assert rest == held
    else:
        assert rest == tail.encode()
    assert got == expected
    assert b"".join(got) + rest == raw


@pytest.mark.parametrize("separator", [b"\n\n", b"\r\n\r\n", b"\r\r", b"\r\n\n", b"\n\r\n"])
def test_separator_split_at_every_position(separator: bytes) -> None:
    first = b"data: {}" + separator
    second = b"event: x\n\n"
    raw = first + second
    for cut in range(len(raw) + 1):
        assert split_all(raw, [cut]) == ([first, second], b"")


def test_lone_cr_separator_waits_for_a_possible_lf() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r\r") == []
    assert splitter.remainder() == b"data: a\r\r"
    assert splitter.feed(b"\ndata: b") == [b"data: a\r\r\n"]
    assert splitter.remainder() == b"data: b"


def test_lone_cr_separator_completes_on_the_next_byte() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r\r") == []
    assert splitter.feed(b"d") == [b"data: a\r\r"]
    assert splitter.remainder() == b"d"


def test_empty_feed_and_unterminated_tail() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"") == []
    assert splitter.feed(b"data: 1\n") == []
    assert splitter.remainder() == b"data: 1\n"
    assert splitter.feed(b"\n") == [b"data: 1\n\n"]
    assert splitter.remainder() == b""


def test_large_event_and_many_small_chunks_stay_linear() -> None:
    big = b"data: " + b"x" * 5_000_000 + b"\n\n"
    started = time.perf_counter()
    splitter = SSESplitter()
    events: list[bytes] = []
    for start in range(0, len(big), 1024):
        events += splitter.feed(big[start : start + 1024])
    many = b"data: {}\n\n" * 100_000
    events_many = splitter.feed(many)
    elapsed = time.perf_counter() - started
    assert events == [big]
    assert len(events_many) == 100_000
    # Linear work is well under a second; a rescan per feed would take minutes.
    assert elapsed < 5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'data: {"a":1}\n\n', (None, '{"a":1}')),
        (b'data:{"a":1}\n\n', (None, '{"a":1}')),
        (b"data:  two spaces\n\n", (None, " two spaces")),
        (b"event: message_start\ndata: {}\n\n", ("message_start", "{}")),
        (b"event: a\nevent: b\ndata: x\n\n", ("b", "x")),
        (b"event:\ndata: x\n\n", (None, "x")),
        (b"data: one\ndata: two\n\n", (None, "one\ntwo")),
        (b"data: one\r\ndata: two\r\n\r\n", (None, "one\ntwo")),
        (b"data: one\rdata: two\r\r", (None, "one\ntwo")),
        (b": keep-alive\n\n", (None, None)),
        (b": comment\ndata: x\n: another\n\n", (None, "x")),
        (b"id: 7\nretry: 100\ndata: x\n\n", (None, "x")),
        (b"data\n\n", (None, "")),
        (b"data: a:b:c\n\n", (None, "a:b:c")),
        (b"data: \xff\xfe\n\n", (None, "\ufffd\ufffd")),
        (b"data: [DONE]\n\n", (None, "[DONE]")),
        (b"", (None, None)),
        # U+2028 is legal inside a JSON string and must not split the data.
        ('data: {"t":"a\u2028b"}\n\n'.encode(), (None, '{"t":"a\u2028b"}')),
    ],
)
def test_event_fields(raw: bytes, expected: tuple[str | None, str | None]) -> None:
    assert event_fields(raw) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("[DONE]", None),
        ("[1, 2]", None),
        ('"text"', None),
        ("null", None),
        ("42", None),
        ("", None),
        ("{not json", None),
        ('{"a": 1}\n{"b": 2}', None),
    ],
)
def test_parse_event_json(data: str, expected: object) -> None:
    assert parse_event_json(data) == expected
