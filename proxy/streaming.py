"""An ASGI response that passes chunks on as they come and notices a client that leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)


class PassthroughStream(Response):
    """Streams ``chunks`` to the client and calls ``on_close(client_gone)`` exactly once.

    Starlette's StreamingResponse cannot tell its body iterator that the client hung up, and
    an iterator that never starts never runs its ``finally``. Here the close callback runs
    whatever happens (end of stream, client gone, server shutdown), so no record is lost and
    the upstream connection is released at once, which also stops the provider generating.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status_code: int,
        headers: list[tuple[str, str]],
        on_close: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.background = None
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.create_task(self._pump(send))
        watch = asyncio.create_task(_wait_for_disconnect(receive))
        client_gone = False
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            client_gone = watch.done() and not pump.done()
            if pump.done() and not pump.cancelled():
                error = pump.exception()
                if isinstance(error, OSError):
                    client_gone = True
                elif error is not None:
                    log.error("stream to client failed: %r", error)
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            await _close_quietly(self.chunks)
            await self.on_close(client_gone)

    async def _pump(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _close_quietly(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        # aclose() of a generator still running in a task being cancelled raises RuntimeError.
        with contextlib.suppress(RuntimeError):
            await close()
