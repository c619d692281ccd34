"""Splitting a streamed JSON array (Gemini without alt=sse) into its elements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.json_stream import JsonArraySplitter, element_json

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
RECORDED = (PAYLOADS / "gemini/stream_array.json").read_bytes()


def _split(data: bytes, size: int) -> tuple[list[bytes], bytes]:
    splitter = JsonArraySplitter()
    elements: list[bytes] = []
    for start in range(0, len(data), size):
        elements += splitter.feed(data[start : start + size])
    return elements, splitter.remainder()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(RECORDED)])
def test_recorded_array_splits_into_its_elements_at_any_chunking(size: int) -> None:
    elements, rest = _split(RECORDED, size)
    assert [json.loads(e) for e in elements] == json.loads(RECORDED)
    assert rest == b""
    assert all(RECORDED.count(e) == 1 for e in elements)  # the bytes exactly as received


@pytest.mark.parametrize(
    "text",
    [
        'a "quoted" word',
        "braces } { and brackets ] [ in text",
        'a backslash \\ then a quote \\"',
        "ends with a backslash \\",
        "unicode é 模型 \u2028",
    ],
)
def test_strings_cannot_end_an_element(text: str) -> None:
    items = [{"candidates": [{"content": {"parts": [{"text": text}]}}]}, {"n": [1, {"x": "]"}]}]
    data = json.dumps(items, ensure_ascii=False).encode()
    for size in (1, 5, len(data)):
        elements, _ = _split(data, size)
        assert [json.loads(e) for e in elements] == items


def test_an_unfinished_element_is_the_remainder() -> None:
    splitter = JsonArraySplitter()
    assert splitter.feed(b'[{"a": 1}\r\n,\r\n{"b": "x') == [b'{"a": 1}']
    assert splitter.remainder() == b'{"b": "x'


def test_element_json_reads_an_element_like_an_event() -> None:
    assert element_json(b'{"a": 1}') == (None, {"a": 1}, False)
    assert element_json(b"[1]") == (None, None, False)
    assert element_json(b'{"a": ') == (None, None, False)
