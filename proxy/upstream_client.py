"""The pooled HTTP client the forwarder talks to upstreams with, behind a small interface.

aiohttp's client does the work: at 64 concurrent connections httpx's pool (httpcore over
anyio) cost the proxy most of its CPU and capped it near 440 requests/s on two cores, where
aiohttp's reached about 2,900 (see the Performance section of README.md). The interface keeps
what the forwarder needs and nothing of aiohttp's: send a request, read or iterate the body,
release the connection, and four kinds of failure::

    UpstreamHTTPError
     ├── UpstreamTimeoutError   connect or read timed out (the client gets a 504)
     ├── UpstreamConnectError   no connection could be made (502)
     ├── UpstreamBrokenError    the connection broke mid-answer or the answer was malformed
     └── PoolExhaustedError     the upstream's own pool stayed full (503): it was not asked

Each upstream has a pool of its own, of its ``max_connections``: past them a request waits
up to its ``pool_timeout`` for a connection to come free, and a slow or busy upstream holds
only its own connections, never another upstream's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
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


class PoolExhaustedError(UpstreamHTTPError):
    """Every connection of the upstream's pool stayed in use for the whole ``pool_timeout``."""

    def __init__(self, pool: str, max_connections: int, waited: float) -> None:
        super().__init__("PoolExhausted", f"pool of {pool} full")
        self.pool = pool
        self.max_connections = max_connections
        self.waited = waited


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to connect and between reads (waiting for a pooled connection: pool_timeout)."""

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


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One upstream's pool as ``/metrics`` shows it."""

    name: str
    url: str
    max_connections: int
    in_use: int
    waiting: int
    exhausted_total: int


class _Pool:
    """One upstream's connections: a session of its own, and a count of who holds them.

    The semaphore is what requests wait on, not aiohttp's connector (of the same size), whose
    wait cannot be told from a slow connect: one admitted here always finds a free slot there.
    """

    def __init__(self, upstream: UpstreamSettings) -> None:
        self.name = upstream.name
        self.url = upstream.url
        self.limit = upstream.max_connections
        self.wait = upstream.pool_timeout
        self.in_use = 0
        self.waiting = 0
        self.exhausted_total = 0
        self._free = asyncio.Semaphore(self.limit)
        connector = aiohttp.TCPConnector(limit=self.limit, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector,
            # Shared by every client of the proxy: a cookie one upstream answer sets must not
            # ride along on somebody else's request (and a jar costs time on every request).
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=upstream.trust_env,
            auto_decompress=True,
            request_class=_ClientHeadersOnly,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def acquire(self) -> None:
        if not self._free.locked():
            await self._free.acquire()  # returns at once: a free slot is taken without waiting
        else:
            self.waiting += 1
            try:
                async with asyncio.timeout(self.wait):
                    await self._free.acquire()
            except TimeoutError:
                self.exhausted_total += 1
                raise PoolExhaustedError(self.name, self.limit, self.wait) from None
            finally:
                self.waiting -= 1
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self._free.release()

    def stats(self) -> PoolStats:
        return PoolStats(
            self.name, self.url, self.limit, self.in_use, self.waiting, self.exhausted_total
        )


class UpstreamResponse:
    """An upstream's answer whose body is still to be read; ``close()`` it exactly once."""

    __slots__ = ("_pool", "_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse, pool: _Pool) -> None:
        self._response = response
        self._pool: _Pool | None = pool
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
        pool, self._pool = self._pool, None
        if pool is not None:  # a second close must not free somebody else's slot
            pool.release()


class UpstreamClient:
    """A pool per upstream (by name), made and closed by the app's lifespan."""

    def __init__(self, routes: Sequence[UpstreamSettings]) -> None:
        self._pools: dict[str, _Pool] = {}
        for route in routes:
            self._pools.setdefault(route.name, _Pool(route))
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    def pool_stats(self) -> list[PoolStats]:
        """Each pool's size and use, read when ``/metrics`` is scraped."""
        return [pool.stats() for pool in self._pools.values()]

    async def send(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        timeouts: Timeouts,
        upstream: UpstreamSettings,
    ) -> UpstreamResponse:
        """Send a request through ``upstream``'s pool; the body is left to read.

        ``url`` must be already percent-encoded. Routes share a pool when they share a name.
        """
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            timeout = self._timeouts[timeouts] = aiohttp.ClientTimeout(
                total=None, connect=timeouts.connect, sock_read=timeouts.read
            )
        pool = self._pools.get(upstream.name)
        if pool is None:
            pool = self._pools[upstream.name] = _Pool(upstream)
        await pool.acquire()
        try:
            response = await pool.session.request(
                method,
                URL(url, encoded=True),
                headers=list(headers),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        except BaseException as exc:
            pool.release()
            if isinstance(exc, _FAILURES):
                raise _translate(exc) from exc
            raise
        return UpstreamResponse(response, pool)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.session.close()
