"""The pooled HTTP client the forwarder talks to upstreams with, behind a small interface.

aiohttp's client does the work: at 64 concurrent connections httpx's pool (httpcore over
anyio) cost the proxy most of its CPU and capped it near 440 requests/s on two cores, where
aiohttp's reached about 2,900 (see the Performance section of README.md). The interface keeps
what the forwarder needs and nothing of aiohttp's: send a request, read or iterate the body,
release the connection, and three kinds of failure::

    UpstreamHTTPError
     ├── UpstreamTimeoutError   connect or read timed out (the client gets a 504)
     ├── UpstreamConnectError   no connection could be made (502)
     └── UpstreamBrokenError    the connection broke mid-answer or the answer was malformed
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config import UpstreamSettings


class UpstreamHTTPError(Exception):
    """Talking to the upstream failed; ``kind`` names the underlying error for messages."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class UpstreamTimeoutError(UpstreamHTTPError):
    """The upstream did not connect or answer within its timeout."""


class UpstreamConnectError(UpstreamHTTPError):
    """No connection to the upstream could be made (refused, DNS, TLS)."""


class UpstreamBrokenError(UpstreamHTTPError):
    """The upstream's connection broke or its answer could not be read."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to connect (including waiting for a pooled connection) and between reads."""

    connect: float
    read: float


def timeouts_of(upstream: UpstreamSettings) -> Timeouts:
    return Timeouts(connect=upstream.connect_timeout, read=upstream.read_timeout)


def _translate(exc: BaseException) -> UpstreamHTTPError:
    kind = type(exc).__name__
    detail = str(exc) or kind
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError(kind, detail)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(kind, detail)
    return UpstreamBrokenError(kind, detail)


_FAILURES = (aiohttp.ClientError, TimeoutError)

_NO_DEFAULTS: CIMultiDict[None] = CIMultiDict(
    (name, None) for name in ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
)


class _ClientHeadersOnly(aiohttp.ClientRequest):
    """A request carrying the client's headers, none of aiohttp's defaults for missing ones.

    What ``skip_auto_headers`` does, without rebuilding and sorting the skip list for every
    request, which cost about 6% of a proxied request's CPU.
    """

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _NO_DEFAULTS


class UpstreamResponse:
    """An upstream's answer whose body is still to be read; ``close()`` it exactly once."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in response.raw_headers
        ]

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def header(self, name: str) -> str:
        """The first value of a (lower-case) header, or an empty string."""
        for key, value in self.headers:
            if key == name:
                return value
        return ""

    async def read(self) -> bytes:
        """The whole body, decoded from gzip or deflate."""
        try:
            return await self._response.read()
        except _FAILURES as exc:
            raise _translate(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (decoded), in whatever pieces the network gives."""
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except _FAILURES as exc:
            raise _translate(exc) from exc

    def close(self) -> None:
        """Give the connection back to the pool when the body was read, else drop it."""
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            # Unread bytes would poison a reused connection; closing also stops the provider.
            response.close()


class UpstreamClient:
    """One pooled client for every upstream; made and closed by the app's lifespan."""

    def __init__(self, max_connections: int, trust_env: bool = False) -> None:
        connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Shared by every client of the proxy: a cookie one upstream answer sets must not
            # ride along on somebody else's request (and a jar costs time on every request).
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=trust_env,
            auto_decompress=True,
            request_class=_ClientHeadersOnly,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    async def send(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """Send a request; the body is left to read. ``url`` must be already percent-encoded."""
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            timeout = self._timeouts[timeouts] = aiohttp.ClientTimeout(
                total=None, connect=timeouts.connect, sock_read=timeouts.read
            )
        try:
            response = await self._session.request(
                method,
                URL(url, encoded=True),
                headers=list(headers),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        except _FAILURES as exc:
            raise _translate(exc) from exc
        return UpstreamResponse(response)

    async def aclose(self) -> None:
        await self._session.close()
