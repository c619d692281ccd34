"""A small mixed load (streamed and not) against a proxy, and the checks that nothing was lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

SESSIONS = ("alpha", "beta", "gamma", "delta")


@dataclass
class LoadResult:
    sent: int = 0
    answered: list[str] = field(default_factory=list)
    """Request ids of every response the proxy started to answer (X-Tally-Request-Id)."""
    refused: int = 0
    """Requests that got no answer at all (connection refused: the proxy had stopped)."""


async def one_request(client: httpx.AsyncClient, index: int, result: LoadResult) -> None:
    stream = index % 2 == 0
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"request {index}"}],
        "stream": stream,
    }
    headers = {"X-Session-Id": SESSIONS[index % len(SESSIONS)]}
    result.sent += 1
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            request_id = r.headers.get("x-tally-request-id")
            if request_id is not None:
                result.answered.append(request_id)
            with contextlib.suppress(httpx.HTTPError):  # a cut stream still counts
                await r.aread()
    except httpx.HTTPError:
        result.refused += 1


async def run_load(
    base_url: str,
    *,
    concurrency: int,
    keep_going: Callable[[LoadResult], bool],
    result: LoadResult | None = None,
) -> LoadResult:
    """Send requests from ``concurrency`` workers while ``keep_going(result)`` holds."""
    result = result if result is not None else LoadResult()
    counter = iter(range(1_000_000))
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def worker() -> None:
            while keep_going(result):
                await one_request(client, next(counter), result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def stored_records(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/usage/requests", params=params)).json()
        records.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return records


async def wait_for_records(
    api: httpx.AsyncClient, count: int, within: float = 30.0
) -> list[dict[str, Any]]:
    """Poll the usage API until ``count`` records are stored (or time runs out)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        records = await stored_records(api)
        if len(records) >= count or asyncio.get_running_loop().time() > deadline:
            return records
        await asyncio.sleep(0.1)


async def assert_sessions_match(api: httpx.AsyncClient, records: list[dict[str, Any]]) -> None:
    """Each session's running totals equal the sums over its stored records."""
    for session_id in SESSIONS:
        mine = [r for r in records if r["session_id"] == session_id]
        if not mine:
            continue
        session = (await api.get(f"/usage/sessions/{session_id}")).json()
        assert session["requests"] == len(mine), session_id
        assert session["total_tokens"] == sum(r["total_tokens"] or 0 for r in mine), session_id
        assert session["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in mine), session_id
