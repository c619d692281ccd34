"""Forwarding: one request to the upstream and its answer back, metered on the side."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.config import UpstreamSettings
from proxy.errors import (
    BodyTooLarge,
    InvalidRequest,
    TallyError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from proxy.metering import completion_text_from_payload
from proxy.plan import BodyError, RequestPlan, client_headers, plan_request, upstream_headers
from proxy.records import Exchange, new_record_id
from proxy.sse import SSESplitter, event_fields, parse_event_json
from proxy.streaming import PassthroughStream
from proxy.tags import TagError, parse_tags
from proxy.usage import StreamAccumulator, is_usage_only_chunk, usage_from_payload

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-tally-request-id"
TOTAL_TOKENS_HEADER = "x-tally-total-tokens"
_USAGE_NULL = b',"usage":null'


class ExchangeSink(Protocol):
    def submit(self, item: Exchange) -> bool: ...


class Forwarder:
    """Sends client requests to one upstream through a pooled client and meters the answers."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        upstream: UpstreamSettings,
        sink: ExchangeSink,
        max_body_bytes: int,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.sink = sink
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: Request) -> Response:
        """The endpoint behind ``/v1/{path}``."""
        started = time.perf_counter()
        record_id = new_record_id()
        id_header = {REQUEST_ID_HEADER: record_id}
        try:
            body = await _read_body(request, self.max_body_bytes)
            headers = request.headers.items()
            plan = plan_request(
                request.url.path,
                body,
                request.headers.get("content-type", ""),
                self.upstream.inject_stream_usage,
            )
            tags = parse_tags(headers, plan.json)
        except BodyError as exc:
            return error_response(InvalidRequest(str(exc)), id_header)
        except TagError as exc:
            return error_response(InvalidRequest(str(exc), param=exc.header), id_header)
        except TallyError as exc:
            return error_response(exc, id_header)

        exchange = Exchange(
            id=record_id,
            created_at=datetime.now(UTC),
            method=request.method,
            endpoint=request.url.path,
            upstream=self.upstream.url,
            stream=plan.stream,
            model=plan.model,
            session_id=tags.session_id,
            user_id=tags.user_id,
            properties=tags.properties,
            request_body=plan.json,
        )
        url = f"{self.upstream.url}/{request.path_params['path']}"
        upstream_request = self.client.build_request(
            request.method,
            url,
            params=request.url.query or None,
            headers=upstream_headers(headers, self.upstream.api_key, plan.stream),
            content=plan.body,
        )
        try:
            response = await self.client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            return self._upstream_failed(exchange, started, exc)
        exchange.status_code = response.status_code
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" in content_type:
            return self._stream(response, exchange, plan, started)
        if "json" in content_type:
            return await self._buffered(response, exchange, started)
        return self._stream(response, exchange, None, started)

    def _upstream_failed(
        self, exchange: Exchange, started: float, exc: httpx.HTTPError
    ) -> Response:
        error = _describe_upstream_error(exc, self.upstream.url)
        exchange.status_code = error.status_code
        exchange.error = error.message
        exchange.latency_ms = _ms_since(started)
        exchange.request_body = None
        self.sink.submit(exchange)
        return error_response(error, {REQUEST_ID_HEADER: exchange.id})

    async def _buffered(
        self, response: httpx.Response, exchange: Exchange, started: float
    ) -> Response:
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            return self._upstream_failed(exchange, started, exc)
        finally:
            await response.aclose()
        exchange.latency_ms = _ms_since(started)
        exchange.completed = True
        headers = _headers_without_encoding(response)
        headers.append((REQUEST_ID_HEADER, exchange.id))
        payload = _json_object(content)
        if payload is not None:
            model = payload.get("model")
            exchange.response_model = model if isinstance(model, str) else None
            exchange.provider_usage = usage_from_payload(payload)
        if exchange.provider_usage is not None:
            headers.append((TOTAL_TOKENS_HEADER, str(exchange.provider_usage.total_tokens)))
            exchange.request_body = None
        elif payload is not None and response.is_success:
            exchange.completion_text = completion_text_from_payload(payload)
        if not response.is_success:
            exchange.error = _upstream_error_message(payload, response.status_code)
            exchange.request_body = None
        self.sink.submit(exchange)
        return Response(content, status_code=response.status_code, headers=dict(headers))

    def _stream(
        self,
        response: httpx.Response,
        exchange: Exchange,
        plan: RequestPlan | None,
        started: float,
    ) -> Response:
        tee = _StreamTee(response, exchange, plan, started, self.sink)
        headers = _headers_without_encoding(response)
        headers.append((REQUEST_ID_HEADER, exchange.id))
        return PassthroughStream(tee.chunks(), response.status_code, headers, tee.finish)


class _StreamTee:
    """Watches a streamed answer on its way to the client and files the exchange at the end."""

    def __init__(
        self,
        response: httpx.Response,
        exchange: Exchange,
        plan: RequestPlan | None,
        started: float,
        sink: ExchangeSink,
    ) -> None:
        self.response = response
        self.exchange = exchange
        self.strip_usage = plan is not None and plan.strip_usage_chunk
        self.watch_events = plan is not None
        self.started = started
        self.sink = sink
        self.splitter = SSESplitter()
        self.accumulator = StreamAccumulator()

    async def chunks(self) -> AsyncIterator[bytes]:
        exchange = self.exchange
        try:
            async for chunk in self.response.aiter_bytes():
                if exchange.ttft_ms is None:
                    exchange.ttft_ms = _ms_since(self.started)
                if not self.watch_events:
                    yield chunk
                elif self.strip_usage:
                    yield self._observe(self.splitter.feed(chunk))
                else:
                    yield chunk
                    self._observe(self.splitter.feed(chunk))
            if self.watch_events:
                # A last event without its blank line still counts (and still reaches the client).
                tail = self.splitter.remainder()
                kept = self._observe([tail]) if tail else b""
                if self.strip_usage:
                    yield kept
            # The connection ended cleanly; the answer is whole only if it said it was finished.
            exchange.completed = self.accumulator.finished or not self.watch_events
        except httpx.HTTPError as exc:
            exchange.error = f"upstream stream broken: {_describe_upstream_error(exc, '').message}"

    def _observe(self, events: list[bytes]) -> bytes:
        kept: list[bytes] = []
        for raw in events:
            event_type, data = event_fields(raw)
            event = parse_event_json(data) if data is not None else None
            if event is not None:
                self.accumulator.feed(event, event_type)
                if self.strip_usage:
                    if is_usage_only_chunk(event):
                        continue
                    if "usage" in event and event["usage"] is None and raw.count(_USAGE_NULL) == 1:
                        raw = raw.replace(_USAGE_NULL, b"")
            kept.append(raw)
        return b"".join(kept)

    async def finish(self, client_gone: bool) -> None:
        exchange = self.exchange
        await self.response.aclose()
        exchange.latency_ms = _ms_since(self.started)
        if not exchange.completed and exchange.error is None:
            exchange.error = (
                "client disconnected" if client_gone else "upstream ended the stream early"
            )
        accumulator = self.accumulator
        exchange.response_model = accumulator.response_model
        exchange.provider_usage = accumulator.usage
        if accumulator.usage is not None or not self.response.is_success:
            exchange.request_body = None
        else:
            exchange.completion_text = accumulator.text
        self.sink.submit(exchange)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def _headers_without_encoding(response: httpx.Response) -> list[tuple[str, str]]:
    # httpx hands over decoded bytes, so the upstream's content-encoding no longer applies.
    pairs = client_headers(response.headers.multi_items())
    return [(name, value) for name, value in pairs if name != "content-encoding"]


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _upstream_error_message(payload: dict[str, Any] | None, status: int) -> str:
    error = payload.get("error") if payload else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"upstream {status}: {error['message'][:500]}"
    return f"upstream {status}"


def _describe_upstream_error(exc: httpx.HTTPError, upstream: str) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(
            f"the upstream {upstream} did not answer in time ({type(exc).__name__})"
        )
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnreachable(f"cannot connect to the upstream {upstream}: is it running?")
    return UpstreamUnreachable(f"the upstream {upstream} failed: {type(exc).__name__}: {exc}")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
