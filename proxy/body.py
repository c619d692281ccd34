"""A request body read under a size limit, so that a client sent over it reads its 413.

A refused body is not kept, but it is read to its end (at most another ``limit`` bytes and
:data:`DRAIN_SECONDS`) before the 413 goes out. Answering while the client still uploads and
then closing the connection, as HTTP/1.0 and ``Connection: close`` requests are closed, made
the client's TCP stack see a reset: clients report the reset, and the 413 was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from proxy.errors import BodyTooLarge

DRAIN_SECONDS = 30.0


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; ``BodyTooLarge`` once it passes ``limit`` bytes (after draining it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        size = int(declared)
        # A client waiting for "100 Continue" has not sent the body: asking for it would.
        if size <= 2 * limit and "100-continue" not in request.headers.get("expect", ""):
            await _drain(request.stream(), size)
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    stream = request.stream()
    async for part in stream:
        size += len(part)
        if size > limit:
            await _drain(stream, limit)
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


async def _drain(stream: AsyncIterator[bytes], bound: int) -> None:
    """Read and drop the rest of a body, up to ``bound`` bytes and :data:`DRAIN_SECONDS`."""
    dropped = 0
    with contextlib.suppress(TimeoutError, ClientDisconnect):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for part in stream:
                dropped += len(part)
                if dropped > bound:
                    return
