"""The ASGI response for a buffered upstream answer: its bytes and headers, sent as they are."""

from __future__ import annotations

from starlette.responses import Response


class BufferedAnswer(Response):
    """``body`` with ``headers`` in their order, repeated names kept (``set-cookie``).

    Starlette's ``Response`` would rebuild the headers from a mapping on every request,
    which both cost time on the hot path and collapsed repeated headers into one.
    """

    def __init__(self, body: bytes, status_code: int, headers: list[tuple[str, str]]) -> None:
        self.body = body
        self.status_code = status_code
        self.background = None
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        raw.append((b"content-length", str(len(body)).encode()))
        self.raw_headers = raw
