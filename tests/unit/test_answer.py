from __future__ import annotations

from typing import Any

from proxy.answer import BufferedAnswer


async def test_buffered_answer_keeps_header_order_and_repeats() -> None:
    headers = [
        ("content-type", "application/json"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("x-tally-request-id", "r1"),
    ]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("a buffered answer reads nothing")

    await BufferedAnswer(b'{"ok":true}', 201, headers)({"type": "http"}, receive, send)
    start, body = sent
    assert start["status"] == 201
    assert start["headers"] == [
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-tally-request-id", b"r1"),
        (b"content-length", b"11"),
    ]
    assert body["body"] == b'{"ok":true}'
