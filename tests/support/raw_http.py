"""One HTTP/1.1 request written byte by byte: a path or header exactly as given.

httpx normalises what it sends (dot segments removed from paths, header values encoded as
ASCII), which is what an attacker's client does not do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson


async def raw_request(
    base_url: str,
    method: bytes,
    target: bytes,
    headers: Sequence[bytes] = (),
    body: bytes = b"",
) -> tuple[int, bytes]:
    """Send one request to ``base_url`` on a fresh connection; the status and the body."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: proxy", b"Connection: close"]
    lines += [*headers, b"Content-Length: " + str(len(body)).encode()]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), content


def error_of(content: bytes) -> dict[str, str | None]:
    """The ``error`` object of an OpenAI-shaped error body."""
    error: dict[str, str | None] = orjson.loads(content)["error"]
    return error
