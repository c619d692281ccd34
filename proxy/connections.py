"""The HTTP server's edge: bounds a hostile client cannot get around, errors in OpenAI's shape.

uvicorn's httptools protocol, with what it lacks in front of the open internet:

- **a header timeout**: a connection has ``server.header_timeout`` seconds from opening (or
  from starting its next request) to send complete request headers, else it is closed, with a
  408 if it had begun a request. Slowloris connections no longer pile up until the process
  runs out of file descriptors and nobody is served;
- **connection bounds**: at most ``server.max_connections_per_client`` open connections per
  client address (429) and ``server.max_connections`` in all (503); a connection over a bound
  is answered at once and closed, so it holds its descriptor for no time at all;
- **headers bounded as they arrive**: more than :data:`MAX_HEADERS` headers or
  :data:`MAX_HEADER_BYTES` of request line and headers get a 431 before they fill memory;
- **malformed requests** (bad bytes, Content-Length with Transfer-Encoding, ...) get a 400 in
  OpenAI's error shape instead of uvicorn's plain text.

Answers here are written straight to the transport: no request reached the app, so none is
metered (there is nothing to meter). The counts are per process: with ``--workers N`` a
client may hold ``N`` times its bound.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from asyncio.events import TimerHandle
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

# The fast path's bound (proxy.fastpath.MAX_HEADER_BYTES), applied here while headers arrive.
# Not imported: this module is loaded by the ``--workers`` supervisor, which stays without
# FastAPI (proxy.errors and proxy.fastpath import it).
MAX_HEADER_BYTES = 64 * 1024
# A client sends a dozen headers; thousands only cost the parser and the forwarder time.
MAX_HEADERS = 256
# Descriptors kept for what is not a client connection: upstream connections are counted
# from the config, this covers the database pool, the spool, logs and the listening socket.
RESERVED_DESCRIPTORS = 64
MIN_CLIENT_CONNECTIONS = 16


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one server process allows its clients; ``None`` per client means no bound."""

    header_timeout: float
    max_connections: int
    max_per_client: int | None


def client_connection_bound(descriptors: int, upstream_connections: int) -> int:
    """How many client connections fit beside the upstream pools under a descriptor limit."""
    spare = descriptors - upstream_connections - RESERVED_DESCRIPTORS
    return max(spare, MIN_CLIENT_CONNECTIONS)


class ConnectionGuard:
    """The limits and the open connections per client address of one server process."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.per_client: dict[str, int] = {}

    def protocol_factory(self) -> Any:
        """What to pass to uvicorn as ``http=``: it calls it for each new connection.

        A partial of a module-level class rather than a class made here, so that ``--workers``
        can pickle the config for its worker processes (each then counts its own clients).
        """
        return functools.partial(GuardedHttpToolsProtocol, guard=self)

    def admit(self, address: str | None) -> bool:
        """Count one more connection of ``address``, unless it already holds its bound."""
        bound = self.limits.max_per_client
        if address is None or bound is None:
            return True
        held = self.per_client.get(address, 0)
        if held >= bound:
            return False
        self.per_client[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self.per_client.get(address, 0) - 1
        if held > 0:
            self.per_client[address] = held
        else:
            self.per_client.pop(address, None)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is on the protocol."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    message: str
    error_type: str
    code: str


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, connection and header bounds."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        guard: ConnectionGuard,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = guard
        # One timer per connection, re-armed rarely; a request only sets the deadline (a timer
        # made and cancelled per request cost more than the rest of this class together).
        self._header_timer: TimerHandle | None = None
        self._headers_due: float | None = None  # loop time by which headers must be complete
        self._counted_as: str | None = None
        self._header_count = 0
        self._header_bytes = 0
        self._refusal: _Answer | None = None
        self._begun = False  # a byte of a request arrived since the deadline was set

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.guard.limits
        address = self.client[0] if self.client else None
        if len(self.connections) > limits.max_connections:
            message = (
                f"tallyproxy has {limits.max_connections} connections open, the bound of "
                "server.max_connections; retry shortly"
            )
            self._answer_and_close(_Answer(503, message, "server_error", "too_many_connections"))
            return
        if not self.guard.admit(address):
            message = (
                f"this address has {limits.max_per_client} connections open to tallyproxy, the "
                "bound of server.max_connections_per_client; reuse or close some"
            )
            self._answer_and_close(_Answer(429, message, "requests", "too_many_connections"))
            return
        if limits.max_per_client is not None:
            self._counted_as = address  # admit() counted it: connection_lost gives it back
        self._begun = False
        self._headers_due = self.loop.time() + limits.header_timeout
        self._watch_headers(limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching_headers()
        if self._counted_as is not None:
            self.guard.release(self._counted_as)
            self._counted_as = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but parse errors are answered in OpenAI's shape (and not logged as
        # warnings: anyone can send garbage, and a log line per connection is theirs to flood).
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            answer = self._refusal or _Answer(
                400, f"malformed HTTP request: {exc}", "invalid_request_error", "invalid_http"
            )
            log.debug("refused a request from %s: %s", self.client, answer.message)
            self._answer_and_close(answer)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self._header_bytes = 0
        # A pipelined request waits behind one in flight, whose answer may take minutes:
        # its headers are bounded by that request's, not by the clock.
        if self._headers_due is None and (self.cycle is None or self.cycle.response_complete):
            self._headers_due = self.loop.time() + self.guard.limits.header_timeout
        self._begun = True

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._refuse_headers(f"more than {MAX_HEADERS} request headers")
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._headers_due = None
        super().on_headers_complete()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse_headers(f"request line and headers exceed {MAX_HEADER_BYTES} bytes")

    def _refuse_headers(self, message: str) -> None:
        self._refusal = _Answer(431, message, "invalid_request_error", "headers_too_large")
        raise _Refused(message)

    def _watch_headers(self, delay: float) -> None:
        self._header_timer = self.loop.call_later(delay, self._check_headers)

    def _stop_watching_headers(self) -> None:
        self._headers_due = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _check_headers(self) -> None:
        """The connection's timer: act on a deadline passed, else look again when it falls
        due (or a timeout from now, while no request is between its first byte and its
        headers)."""
        self._header_timer = None
        if self.transport.is_closing():
            return
        timeout = self.guard.limits.header_timeout
        due = self._headers_due
        left = timeout if due is None else due - self.loop.time()
        if left > 0:
            self._watch_headers(left)
            return
        self._headers_too_late()

    def _headers_too_late(self) -> None:
        if not self._begun:
            self.transport.close()  # not a byte of a request: nothing to answer
            return
        timeout = self.guard.limits.header_timeout
        message = f"request headers not complete within {timeout:g} s (server.header_timeout)"
        self._answer_and_close(_Answer(408, message, "invalid_request_error", "request_timeout"))

    def _answer_and_close(self, answer: _Answer) -> None:
        self._stop_watching_headers()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(answer, self.server_state.default_headers))
            self.transport.close()


def _raw_response(answer: _Answer, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    # OpenAI's error shape, as proxy.errors.error_body builds it.
    error = {"message": answer.message, "type": answer.error_type, "param": None}
    body = json.dumps({"error": {**error, "code": answer.code}}).encode()
    head = [STATUS_LINE[answer.status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body
