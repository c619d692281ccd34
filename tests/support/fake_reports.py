"""A fake of the providers' admin report APIs: a real aiohttp server, shapes as documented.

OpenAI: ``GET /v1/organization/usage/{completions,embeddings,moderations}`` and ``GET
/v1/organization/costs`` (Bearer admin key). Anthropic: ``GET
/v1/organizations/usage_report/messages`` and ``GET /v1/organizations/cost_report``
(``x-api-key``). Usage is kept as :class:`Traffic` items at some moment; each call sums them
into the buckets asked for (``bucket_width``, every bucket of the range, empty ones too),
grouped as asked, ``page_size`` buckets a page with a ``next_page`` cursor.

``fail_next`` holds answers given before the real ones, one per call: ``(429, {"retry-after":
"1"})``, ``(500, {})``, ``("malformed", {})``. A wrong admin key gets the provider's 401,
a path in ``refused_paths`` a 403.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

OPENAI_KEY = "sk-admin-fake-openai"
ANTHROPIC_KEY = "sk-ant-admin01-fake"
_WIDTHS = {"1d": timedelta(days=1), "1h": timedelta(hours=1), "1m": timedelta(minutes=1)}


@dataclass
class Traffic:
    """Usage the provider saw at ``at``: ``requests`` calls of ``model`` on a key."""

    at: datetime
    model: str
    requests: int = 1
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    api_key_id: str = "key_proxy"
    project_id: str = "proj_tally"
    endpoint: str = "completions"


@dataclass
class FakeReports:
    url: str = ""
    traffic: list[Traffic] = field(default_factory=list)
    page_size: int | None = None
    fail_next: list[tuple[int | str, dict[str, str]]] = field(default_factory=list)
    calls: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    refused_paths: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/organization/usage/{endpoint}", self.openai_usage)
        app.router.add_get("/v1/organization/costs", self.openai_costs)
        app.router.add_get("/v1/organizations/usage_report/messages", self.anthropic_usage)
        app.router.add_get("/v1/organizations/cost_report", self.anthropic_costs)
        return app

    def _begin(self, request: web.Request, provider: str) -> web.Response | None:
        with self.lock:
            self.calls.append((request.path, list(request.query.items())))
            failure = self.fail_next.pop(0) if self.fail_next else None
        if provider == "openai":
            authorized = request.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
        else:
            authorized = request.headers.get("x-api-key") == ANTHROPIC_KEY and bool(
                request.headers.get("anthropic-version")
            )
        if not authorized:
            return _error(provider, 401, "invalid admin key")
        if request.path in self.refused_paths:
            return _error(provider, 403, "this admin key may not read this report")
        if failure is None:
            return None
        status, headers = failure
        if status == "malformed":
            return web.Response(status=200, text='{"object": "page", "data": [{"start_t')
        assert isinstance(status, int)
        return _error(provider, status, "slow down" if status == 429 else "overloaded", headers)

    # OpenAI

    async def openai_usage(self, request: web.Request) -> web.Response:
        failed = self._begin(request, "openai")
        if failed is not None:
            return failed
        q = request.query
        endpoint = request.match_info["endpoint"]
        groups = _openai_groups(q.getall("group_by", []))
        start = datetime.fromtimestamp(int(q["start_time"]), UTC)
        end = datetime.fromtimestamp(int(q["end_time"]), UTC) if "end_time" in q else None
        width = q.get("bucket_width", "1d")
        buckets = self._buckets(start, end, width, [t for t in self.traffic
                                                     if t.endpoint == endpoint])  # fmt: skip
        data = []
        for b_start, items in buckets:
            results = []
            for key, group in _grouped(items, groups).items():
                result: dict[str, Any] = {
                    "object": f"organization.usage.{endpoint}.result",
                    "input_tokens": sum(t.input_tokens for t in group),
                    "num_model_requests": sum(t.requests for t in group),
                    "project_id": key.get("project_id"),
                    "user_id": None,
                    "api_key_id": key.get("api_key_id"),
                    "model": key.get("model"),
                }
                if endpoint == "completions":
                    result["input_cached_tokens"] = sum(t.cached_input_tokens for t in group)
                    result["output_tokens"] = sum(t.output_tokens for t in group)
                    result.update(input_audio_tokens=0, output_audio_tokens=0, batch=None)
                results.append(result)
            data.append(
                {"object": "bucket", "start_time": int(b_start.timestamp()),
                 "end_time": int((b_start + _WIDTHS[width]).timestamp()), "results": results}
            )  # fmt: skip
        return self._paged(data, q, "openai", default_limit=7)

    async def openai_costs(self, request: web.Request) -> web.Response:
        failed = self._begin(request, "openai")
        if failed is not None:
            return failed
        q = request.query
        start = datetime.fromtimestamp(int(q["start_time"]), UTC)
        end = datetime.fromtimestamp(int(q["end_time"]), UTC) if "end_time" in q else None
        data = []
        for b_start, items in self._buckets(start, end, "1d", self.traffic):
            sums: dict[tuple[str, str], Decimal] = {}
            for t in items:
                key = (t.project_id, f"{t.model}, input")
                sums[key] = sums.get(key, Decimal(0)) + t.cost_usd
            data.append(
                {"object": "bucket", "start_time": int(b_start.timestamp()),
                 "end_time": int((b_start + _WIDTHS["1d"]).timestamp()),
                 "results": [{"object": "organization.costs.result",
                              "amount": {"value": float(v), "currency": "usd"},
                              "line_item": line, "project_id": project}
                             for (project, line), v in sums.items()]}
            )  # fmt: skip
        return self._paged(data, q, "openai", default_limit=7)

    # Anthropic

    async def anthropic_usage(self, request: web.Request) -> web.Response:
        failed = self._begin(request, "anthropic")
        if failed is not None:
            return failed
        q = request.query
        groups = [{"workspace_id": "project_id"}.get(g, g) for g in q.getall("group_by[]", [])]
        start, end = _rfc(q["starting_at"]), _rfc(q["ending_at"]) if "ending_at" in q else None
        width = q.get("bucket_width", "1d")
        data = []
        for b_start, items in self._buckets(start, end, width, self.traffic):
            results = [
                {"uncached_input_tokens": sum(t.input_tokens - t.cached_input_tokens
                                              for t in group),
                 "cache_creation": {"ephemeral_1h_input_tokens": 0,
                                    "ephemeral_5m_input_tokens": 0},
                 "cache_read_input_tokens": sum(t.cached_input_tokens for t in group),
                 "output_tokens": sum(t.output_tokens for t in group),
                 "server_tool_use": {"web_search_requests": 0},
                 "api_key_id": key.get("api_key_id"), "workspace_id": key.get("project_id"),
                 "model": key.get("model"), "service_tier": None, "context_window": None}
                for key, group in _grouped(items, groups).items()
            ]  # fmt: skip
            data.append(
                {
                    "starting_at": _iso(b_start),
                    "ending_at": _iso(b_start + _WIDTHS[width]),
                    "results": results,
                }
            )
        return self._paged(data, q, "anthropic", default_limit=7)

    async def anthropic_costs(self, request: web.Request) -> web.Response:
        failed = self._begin(request, "anthropic")
        if failed is not None:
            return failed
        q = request.query
        start, end = _rfc(q["starting_at"]), _rfc(q["ending_at"]) if "ending_at" in q else None
        data = []
        for b_start, items in self._buckets(start, end, "1d", self.traffic):
            sums: dict[tuple[str, str], Decimal] = {}
            for t in items:
                sums[(t.project_id, t.model)] = sums.get((t.project_id, t.model), Decimal(0)) + (
                    t.cost_usd
                )
            data.append(
                {"starting_at": _iso(b_start), "ending_at": _iso(b_start + _WIDTHS["1d"]),
                 "results": [{"currency": "USD", "amount": str(v * 100), "workspace_id": ws,
                              "description": f"{model} Usage - Input Tokens", "cost_type":
                              "tokens", "model": model, "token_type": "uncached_input_tokens",
                              "service_tier": "standard", "context_window": "0-200k"}
                             for (ws, model), v in sums.items()]}
            )  # fmt: skip
        return self._paged(data, q, "anthropic", default_limit=7)

    # Shared

    def _buckets(
        self, start: datetime, end: datetime | None, width: str, items: list[Traffic]
    ) -> list[tuple[datetime, list[Traffic]]]:
        step = _WIDTHS[width]
        by_bucket: dict[datetime, list[Traffic]] = {}
        for t in items:
            by_bucket.setdefault(_floor(t.at, width), []).append(t)
        buckets = []
        moment = _floor(start, width)
        last = end or datetime.now(UTC)
        while moment < last:
            buckets.append((moment, by_bucket.get(moment, [])))
            moment += step
        return buckets

    def _paged(
        self, data: list[dict[str, Any]], q: Any, provider: str, default_limit: int
    ) -> web.Response:
        limit = self.page_size or int(q.get("limit", default_limit))
        offset = int(q.get("page", "0") or 0)
        page = data[offset : offset + limit]
        more = offset + limit < len(data)
        body: dict[str, Any] = {"data": page, "has_more": more,
                                "next_page": str(offset + limit) if more else None}  # fmt: skip
        if provider == "openai":
            body = {"object": "page", **body}
        return web.json_response(body)


def _openai_groups(values: list[str]) -> list[str]:
    return [name for value in values for name in value.split(",") if name]


def _grouped(items: list[Traffic], groups: list[str]) -> dict[Any, list[Traffic]]:
    result: dict[Any, list[Traffic]] = {}
    for t in items:
        key = tuple((g, getattr(t, g)) for g in groups if g in ("model", "project_id",
                                                                "api_key_id"))  # fmt: skip
        result.setdefault(key, []).append(t)
    return {_Key(k): v for k, v in result.items()}


class _Key(tuple[tuple[str, str], ...]):
    def get(self, name: str) -> str | None:
        return dict(self).get(name)


def _error(
    provider: str, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    if provider == "openai":
        body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    else:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=headers or {})


def _floor(moment: datetime, width: str) -> datetime:
    if width == "1d":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if width == "1h":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(second=0, microsecond=0)


def _rfc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def run_fake_reports() -> Iterator[FakeReports]:
    """The fake report server on its own loop in a thread, at ``fake.url``."""
    fake = FakeReports()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app(), access_log=None)
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}"
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # handed to the test thread
            state["error"] = exc
            ready.set()
            return
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    if "error" in state:
        raise state["error"]
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
