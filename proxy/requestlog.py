"""The access log: one line per request, on the ``tallyproxy.access`` logger.

A request that leaves a record is logged by the record writer once the record is metered
(in its worker thread, a batch at a time), so the line carries the model, tokens and cost
and the request path pays nothing. A request that leaves none (a 404 outside ``/v1``, a
proxy 4xx, an upstream that could not be reached) is logged by :class:`UnrecordedRequests`
as its response ends. Lines never hold keys, tokens, prompts or answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.records import RequestRecord

T = TypeVar("T")

access_log = logging.getLogger("tallyproxy.access")
_RECORD_ID = b"x-tally-request-id"


def record_fields(record: RequestRecord) -> dict[str, Any]:
    """What the access log says of a metered record."""
    usage = record.usage
    return {
        "method": record.method,
        "path": record.endpoint,
        "status": record.status_code,
        "model": record.model,
        "tokens_in": usage.prompt_tokens if usage is not None else None,
        "tokens_out": usage.completion_tokens if usage is not None else None,
        "cost_usd": str(record.cost_usd) if record.cost_usd is not None else None,
        "latency_ms": round(record.latency_ms) if record.latency_ms is not None else None,
        "session": record.session_id,
        "user": record.user_id,
        "record": record.id,
    }


def unrecorded_fields(method: str, path: str, status: int, latency_ms: float) -> dict[str, Any]:
    """What the access log says of a request that left no record."""
    return {
        "method": method,
        "path": path,
        "status": status,
        "model": None,
        "tokens_in": None,
        "tokens_out": None,
        "cost_usd": None,
        "latency_ms": round(latency_ms),
        "session": None,
        "user": None,
        "record": None,
    }


class AccessLine:
    """An access-log message, formatted only if a handler prints it: as text by ``str``,
    or as JSON fields by :class:`proxy.logs.JsonLines`, which reads :attr:`fields`."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        """``POST /v1/chat/completions 200 model=gpt-4o tokens_in=12 ... record=...``"""
        fields = self.fields
        head = f"{fields['method']} {fields['path']} {fields['status']}"
        rest = " ".join(
            f"{name}={'-' if value is None else value}"
            for name, value in fields.items()
            if name not in ("method", "path", "status")
        )
        return f"{head} {rest}"


def logging_records(
    prepare: Callable[[list[T]], list[RequestRecord]],
) -> Callable[[list[T]], list[RequestRecord]]:
    """Wrap the writer's ``prepare`` step: each metered batch is logged, one line a record."""

    def prepare_and_log(items: list[T]) -> list[RequestRecord]:
        records = prepare(items)
        log_records(records)
        return records

    return prepare_and_log


def log_records(records: Sequence[RequestRecord]) -> None:
    """One line a record (in the writer's worker thread, off the request path)."""
    if access_log.isEnabledFor(logging.INFO):
        for record in records:
            access_log.info("%s", AccessLine(record_fields(record)))


class UnrecordedRequests:
    """ASGI middleware: log the HTTP requests whose response names no record."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        recorded = False

        async def watch(message: Message) -> None:
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = message["status"]
                recorded = any(name == _RECORD_ID for name, _ in message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not recorded:
                elapsed = (time.perf_counter() - started) * 1000
                fields = unrecorded_fields(scope["method"], scope["path"], status, elapsed)
                access_log.info("%s", AccessLine(fields))
