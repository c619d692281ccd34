"""An ASGI response that passes chunks on as they come and notices a client that leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from proxy.errors import ErrorShape, error_body, gemini_error_body
from proxy.records import PROXY_SHUTTING_DOWN

log = logging.getLogger(__name__)

OnClose = Callable[[bool, bool], Awaitable[None]]
"""``on_close(client_gone, shutting_down)``: how the stream ended, called exactly once."""

_GOODBYE_SECONDS = 1.0
"""How long the last words to a client cut by the shutdown may take (it may not read)."""


def shutdown_event(shape: ErrorShape = "openai") -> bytes:
    """The SSE event a stream cut by the proxy's shutdown ends with: the error shape of the
    client's API, which the SDKs raise as an error (after a blank line, in case an event was
    cut)."""
    return b"\n\ndata: " + orjson.dumps(_shutdown_error(shape)) + b"\n\n"


def shutdown_response(headers: dict[str, str], shape: ErrorShape = "openai") -> Response:
    """The answer to a request the proxy's shutdown cut before its upstream answered."""
    return JSONResponse(_shutdown_error(shape), status_code=503, headers=headers)


def _shutdown_error(shape: ErrorShape = "openai") -> dict[str, Any]:
    if shape == "gemini":
        return gemini_error_body(503, PROXY_SHUTTING_DOWN, "proxy_shutting_down")
    return error_body(PROXY_SHUTTING_DOWN, "server_error", code="proxy_shutting_down")


class PassthroughStream(Response):
    """Streams ``chunks`` to the client and calls ``on_close`` exactly once.

    Starlette's StreamingResponse cannot tell its body iterator that the client hung up, and
    an iterator that never starts never runs its ``finally``. Here the close callback runs
    whatever happens (end of stream, client gone, server shutdown), so no record is lost and
    the upstream connection is released at once, which also stops the provider generating.
    ``on_end`` runs just before the client is told the body is complete (the journal's last
    chance). A stream the server cancels at shutdown ends with ``goodbye`` (an SSE error
    event, for event streams) instead of a traceback.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status_code: int,
        headers: list[tuple[str, str]],
        on_close: OnClose,
        *,
        on_end: Callable[[], None] | None = None,
        goodbye: bytes = b"",
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.background = None
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.on_close = on_close
        self.on_end = on_end
        self.goodbye = goodbye
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.create_task(self._pump(send))
        watch = asyncio.create_task(_wait_for_disconnect(receive))
        client_gone = shutting_down = False
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            client_gone = watch.done() and not pump.done()
            if pump.done() and not pump.cancelled():
                error = pump.exception()
                if isinstance(error, OSError):
                    client_gone = True
                elif error is not None:
                    log.error("stream to client failed: %r", error)
        except asyncio.CancelledError:
            # Only the server cancels a response: its shutdown grace is over. Ending the
            # stream here, with a word to the client, is what the cancellation asks for.
            shutting_down = True
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            await _close_quietly(self.chunks)
            if shutting_down:
                await self._say_goodbye(send)
            await self.on_close(client_gone, shutting_down)

    async def _pump(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self.started = True
        async for chunk in self.chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.on_end is not None:
            self.on_end()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _say_goodbye(self, send: Send) -> None:
        log.info("proxy shutting down: cut a stream still in flight")
        if self.started and not self.goodbye:
            return  # a body with no way to say so: left incomplete, the client sees it cut
        if self.started:
            messages = [{"type": "http.response.body", "body": self.goodbye, "more_body": True}]
        else:
            body = orjson.dumps(_shutdown_error())
            start = {"type": "http.response.start", "status": 503, "headers": _JSON_HEADERS}
            messages = [start, {"type": "http.response.body", "body": body, "more_body": True}]
        messages.append({"type": "http.response.body", "body": b"", "more_body": False})
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_SECONDS):
                for message in messages:
                    await send(message)


_JSON_HEADERS = [(b"content-type", b"application/json")]


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
