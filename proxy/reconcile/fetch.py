"""Reading a provider's reports over HTTP: every page, 429s waited out, errors named.

A report is read whole or not at all: any page that fails raises a ``ReportError`` naming
the provider and the call, so that nothing partial is ever compared or stored. The admin key
goes into the request headers only; no message, log line or error holds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from proxy.reconcile import anthropic_reports, openai_reports
from proxy.reconcile.reports import (
    BucketWidth,
    CostRow,
    MalformedReport,
    Page,
    PageShapeError,
    Provider,
    ReportError,
    ReportRefused,
    ReportUnavailable,
    UsageRow,
)

log = logging.getLogger(__name__)

Params = Callable[[str | None], list[tuple[str, str]]]
Parse = Callable[[Any], Page]

DEFAULT_URLS: Mapping[str, str] = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
}
MAX_PAGES = 1000
"""A cursor that never ends is a provider's bug: stop rather than loop."""


@dataclass(frozen=True, slots=True)
class Report:
    """A provider's usage rows and cost lines over one range."""

    provider: Provider
    usage: tuple[UsageRow, ...]
    costs: tuple[CostRow, ...]


class ReportFetcher:
    """Pages through one provider's admin reports with one admin key."""

    def __init__(
        self,
        provider: Provider,
        api_key: str,
        base_url: str | None = None,
        *,
        max_attempts: int = 5,
        max_wait: float = 60.0,
        timeout: float = 30.0,
    ) -> None:
        self.provider: Provider = provider
        self.base_url = (base_url or DEFAULT_URLS[provider]).rstrip("/")
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        if provider == "openai":
            self._headers = {"authorization": f"Bearer {api_key}"}
        else:
            self._headers = {
                "x-api-key": api_key,
                "anthropic-version": anthropic_reports.API_VERSION,
            }

    def __repr__(self) -> str:  # never the key
        return f"ReportFetcher({self.provider!r}, {self.base_url!r})"

    async def report(self, since: datetime, until: datetime, width: BucketWidth) -> Report:
        """Every usage row in ``[since, until)`` at ``width``, and the cost lines of its days."""
        first_day = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        last_day = until.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if last_day < until:
            last_day += timedelta(days=1)
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            usage: list[UsageRow] = []
            costs: list[CostRow] = []
            if self.provider == "openai":
                for endpoint in openai_reports.USAGE_ENDPOINTS:
                    path = openai_reports.USAGE_PATH.format(endpoint=endpoint)
                    pages = await self.pages(
                        session,
                        path,
                        lambda cursor: openai_reports.usage_params(since, until, width, cursor),
                        openai_reports.usage_page,
                    )
                    usage.extend(row for page in pages for row in page.usage)
                pages = await self.pages(
                    session,
                    openai_reports.COSTS_PATH,
                    lambda cursor: openai_reports.costs_params(first_day, last_day, cursor),
                    openai_reports.costs_page,
                )
            else:
                pages = await self.pages(
                    session,
                    anthropic_reports.USAGE_PATH,
                    lambda cursor: anthropic_reports.usage_params(since, until, width, cursor),
                    anthropic_reports.usage_page,
                )
                usage.extend(row for page in pages for row in page.usage)
                pages = await self.pages(
                    session,
                    anthropic_reports.COSTS_PATH,
                    lambda cursor: anthropic_reports.costs_params(first_day, last_day, cursor),
                    anthropic_reports.costs_page,
                )
            costs.extend(row for page in pages for row in page.costs)
        return Report(self.provider, tuple(usage), tuple(costs))

    async def pages(
        self, session: aiohttp.ClientSession, path: str, params: Params, parse: Parse
    ) -> list[Page]:
        """Every page of one report, following ``next_page``."""
        call = f"GET {path}"
        pages: list[Page] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            body = await self._get(session, call, self.base_url + path, params(cursor))
            try:
                page = parse(body)
            except PageShapeError as exc:
                raise MalformedReport(self.provider, call, f"unexpected page: {exc}") from None
            pages.append(page)
            cursor = page.next_page
            if cursor is None:
                return pages
        raise MalformedReport(self.provider, call, f"more than {MAX_PAGES} pages")

    async def _get(
        self, session: aiohttp.ClientSession, call: str, url: str, params: list[tuple[str, str]]
    ) -> Any:
        wait = 1.0
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                async with session.get(url, params=params, headers=self._headers) as response:
                    raw = await response.read()
                    status = response.status
                    retry_after = response.headers.get("retry-after")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"provider unreachable ({type(exc).__name__}: {exc})"
                if last:
                    raise ReportUnavailable(self.provider, call, problem) from None
                log.warning("%s: %s: %s; retrying in %.0fs", self.provider, call, problem, wait)
                await asyncio.sleep(wait)
                wait *= 2
                continue
            if status == 200:
                try:
                    return orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise MalformedReport(self.provider, call, "the page is not JSON") from None
            message = _error_message(raw)
            if status in (401, 403):
                raise ReportRefused(
                    self.provider,
                    call,
                    f"HTTP {status}: the admin key was refused ({message}); check that the "
                    "environment variable named by api_key_env holds a valid admin key",
                )
            if status == 429 or status >= 500:
                delay = _retry_after(retry_after) if status == 429 else None
                delay = wait if delay is None else delay
                if last or delay > self.max_wait:
                    kind = "rate limited" if status == 429 else "provider error"
                    raise ReportUnavailable(
                        self.provider,
                        call,
                        f"HTTP {status} ({kind}: {message}), {attempt} attempts",
                    )
                log.warning(
                    "%s: %s: HTTP %d; retrying in %.1fs", self.provider, call, status, delay
                )
                await asyncio.sleep(delay)
                wait *= 2
                continue
            raise ReportError(self.provider, call, f"HTTP {status}: {message}")
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_message(raw: bytes) -> str:
    """The provider's own error message (both put it at ``error.message``), shortened."""
    try:
        body = orjson.loads(raw)
        message = body["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = raw[:200].decode(errors="replace").strip() or "no body"
    return str(message)[:300]
