"""Signed JSON webhooks with retries, for the background jobs (anomalies, the daily digest).

A delivery is a POST of the JSON body, signed with the shared secret when there is one
(``proxy.signing``); a non-2xx answer or a network error is retried with doubling waits.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from proxy.signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0


class Webhook:
    """One receiver: its URL, the signing secret and how hard to try."""

    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        max_attempts: int = 6,
        retry_seconds: float = 2.0,
    ) -> None:
        self.url = url
        self.secret = secret
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, body: bytes, what: str) -> bool:
        """POST ``body`` until the receiver takes it; False once the attempts are spent.
        ``what`` names the delivery in the log lines."""
        headers = {"content-type": "application/json"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        wait = self.retry_seconds
        for attempt in range(1, self.max_attempts + 1):
            problem = await self._post(body, headers)
            if problem is None:
                log.info("%s sent to the webhook", what)
                return True
            if attempt < self.max_attempts:
                log.warning("%s not delivered (%s); retrying in %.1fs", what, problem, wait)
                await asyncio.sleep(wait)
                wait *= 2
        log.error("%s given up after %d attempts", what, self.max_attempts)
        return False

    async def _post(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None once the receiver answered 2xx; else what went wrong."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT)
            )
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
