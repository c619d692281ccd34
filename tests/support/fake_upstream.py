"""A fake OpenAI (and Anthropic, Gemini) provider: a real HTTP server with the real wire shapes.

Endpoints: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses``, ``/v1/messages`` (Anthropic), ``GET /v1/models``; JSON or SSE streams as the
request asks. Gemini's native API at ``/v1beta/models/{model}:{method}`` (and ``/v1/...``):
``generateContent``, ``streamGenerateContent`` (``?alt=sse`` events, else one JSON array sent
piece by piece) and ``countTokens``; its OpenAI-compatible endpoint at
``/v1beta/openai/chat/completions``. Anything else answers an OpenAI-shaped 404 (and is
recorded too).

Behaviour is chosen per request with the ``X-Fake-Scenario`` header (comma-separated; the
proxy forwards it unchanged) on top of :attr:`FakeUpstream.scenario`, the test's default:

==================  ========================================================================
``no-usage``        omit usage entirely, even when ``stream_options.include_usage`` asks
``error-NNN``       answer status NNN with the provider's error JSON (401, 429, 500, ...)
``slow``            sleep between chunks (JSON: before answering): ``X-Fake-Delay-Ms`` or
                    :attr:`FakeUpstream.delay_ms`
``stall``           send part of the body, then hang until the client goes away
``cut``             send part of the body, then drop the connection mid-body
``malformed``       truncated JSON body / garbage lines in the event stream
``gzip``            gzip the body (``Content-Encoding: gzip``), streams included
``chunks=N``        N content chunks in a stream (default: one per word)
``tool-calls``      chat completions and Anthropic messages answer a call to the request's
                    first tool
``parallel-tool-calls``  the same, one call to each of the request's tools
==================  ========================================================================

An unknown scenario name is answered with a 400 naming it, so that a typo fails loudly.

Usage numbers come from :attr:`FakeUpstream.usage` (a :class:`FakeUsage`), overridable per
request with ``X-Fake-Usage: prompt_tokens=100,cached_tokens=20``. Each API gets them in its
own shape; Anthropic's ``input_tokens`` is ``prompt_tokens - cached_tokens -
cache_creation_tokens`` so that the three add up to ``prompt_tokens``; Gemini's
``candidatesTokenCount`` is ``completion_tokens - reasoning_tokens`` (thoughts apart) and its
``promptTokenCount`` leaves out ``tool_use_prompt_tokens``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.support.servers import run_asgi_server

__all__ = ["FakeUpstream", "FakeUsage", "RecordedRequest"]

DEFAULT_REPLY = "Hello! How can I help you today?"
JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"


@dataclass(frozen=True, slots=True)
class FakeUsage:
    """The token counts the fake reports; ``prompt_tokens`` includes cached and cache-creation."""

    prompt_tokens: int = 19
    completion_tokens: int = 10
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_audio_tokens: int = 0
    completion_audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0
    tool_use_prompt_tokens: int = 0
    reported_total: int | None = None
    """The ``total_tokens`` to answer instead of the sum (LiteLLM's mock embeddings say 0)."""

    @property
    def total_tokens(self) -> int:
        if self.reported_total is not None:
            return self.reported_total
        return self.prompt_tokens + self.completion_tokens

    def gemini(self, answered: float = 1.0) -> dict[str, Any]:
        """Gemini ``usageMetadata`` once ``answered`` (0..1) of the candidates are out: thoughts
        come first, whole; the prompt is known from the first chunk."""
        candidates = round((self.completion_tokens - self.reasoning_tokens) * answered)
        prompt = self.prompt_tokens - self.tool_use_prompt_tokens
        metadata: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt_tokens + candidates + self.reasoning_tokens,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": prompt - self.prompt_audio_tokens}
            ],
        }
        if self.prompt_audio_tokens:
            audio = {"modality": "AUDIO", "tokenCount": self.prompt_audio_tokens}
            metadata["promptTokensDetails"].append(audio)
        if self.cached_tokens:
            metadata["cachedContentTokenCount"] = self.cached_tokens
        if self.reasoning_tokens:
            metadata["thoughtsTokenCount"] = self.reasoning_tokens
        if self.tool_use_prompt_tokens:
            metadata["toolUsePromptTokenCount"] = self.tool_use_prompt_tokens
        return metadata

    def chat(self) -> dict[str, Any]:
        """Chat Completions / Completions ``usage``."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {
                "cached_tokens": self.cached_tokens,
                "audio_tokens": self.prompt_audio_tokens,
            },
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": self.completion_audio_tokens,
                "accepted_prediction_tokens": self.accepted_prediction_tokens,
                "rejected_prediction_tokens": self.rejected_prediction_tokens,
            },
        }

    def embeddings(self) -> dict[str, Any]:
        total = self.prompt_tokens if self.reported_total is None else self.reported_total
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": total}

    def responses(self) -> dict[str, Any]:
        """Responses API ``usage``."""
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }

    def anthropic(self) -> dict[str, Any]:
        """Anthropic Messages ``usage`` (input excludes cache reads and writes)."""
        return {
            "input_tokens": self.prompt_tokens - self.cached_tokens - self.cache_creation_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": self.completion_tokens,
            "service_tier": "standard",
        }


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    headers: Headers  # case-insensitive
    body: bytes
    received_at: float = field(default_factory=time.monotonic)
    raw_path: bytes = b""  # the path as sent, before percent-decoding

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True, slots=True)
class _Scenario:
    names: frozenset[str]
    chunks: int | None
    delay: float
    usage: FakeUsage | None
    error_status: int | None
    problem: str | None = None  # a mistake in the scenario itself, answered as a 400

    def __contains__(self, name: str) -> bool:
        return name in self.names


SCENARIOS = frozenset(
    {
        "no-usage",
        "slow",
        "stall",
        "cut",
        "malformed",
        "gzip",
        "tool-calls",
        "parallel-tool-calls",
        # Chat streams as LiteLLM's proxy sends them: the usage chunk with one empty choice.
        "litellm-usage",
        # Chat stream chunks written by Python's json.dumps: ``, "usage": null``.
        "spaced-json",
    }
)


class _Cut(Exception):
    """Raised to make uvicorn drop the connection in the middle of a body."""


class _QuietCut(logging.Filter):
    """Keep uvicorn from logging the deliberate ``cut`` as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Cut)


_QUIET_CUT = _QuietCut()


class _Wire:
    """An ASGI response sent part by part, with the scenario's delays, stall, cut and gzip.

    It watches for the client going away while it sends, as a real provider notices a
    closed connection, and counts those disconnects on the fake.
    """

    def __init__(
        self,
        fake: FakeUpstream,
        parts: list[bytes],
        *,
        status: int = 200,
        media_type: str = JSON,
        headers: dict[str, str] | None = None,
        scenario: _Scenario,
        stream: bool,
    ) -> None:
        self.fake = fake
        self.status = status
        self.stream = stream
        self.scenario = scenario
        self.headers = {"content-type": media_type, **(headers or {})}
        self.parts = parts
        if "gzip" in scenario:
            self.headers["content-encoding"] = "gzip"
            self.parts = _gzip_parts(parts, whole=not stream)
        # Where stall and cut interrupt: half-way through the parts.
        self.interrupt_at = max(1, len(self.parts) // 2)
        if not stream:
            self.headers["content-length"] = str(sum(map(len, self.parts)))
            if ("stall" in scenario or "cut" in scenario) and len(self.parts) == 1:
                body = self.parts[0]
                self.parts = [body[: len(body) // 2], body[len(body) // 2 :]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        if not self.stream and "slow" in self.scenario:
            await asyncio.sleep(self.scenario.delay)  # time to first byte
        await send({"type": "http.response.start", "status": self.status, "headers": raw_headers})
        if not self.stream and not {"stall", "cut", "slow"} & self.scenario.names:
            await send({"type": "http.response.body", "body": b"".join(self.parts)})
            return
        producer = asyncio.ensure_future(self._produce(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                task.cancel()
        if watcher.done() and not watcher.cancelled() and not producer.done():
            self.fake._count_disconnect()
        with contextlib.suppress(asyncio.CancelledError):
            await producer  # re-raises _Cut for uvicorn to close the connection

    async def _produce(self, send: Send) -> None:
        delay = self.scenario.delay if "slow" in self.scenario else 0.0
        for index, part in enumerate(self.parts):
            if index == self.interrupt_at:
                if "stall" in self.scenario:
                    await self.fake._stall()
                    raise _Cut("stalled stream released by the fake's shutdown")
                if "cut" in self.scenario:
                    raise _Cut("connection cut on purpose by the fake upstream")
            if index and delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _gzip_parts(parts: list[bytes], *, whole: bool) -> list[bytes]:
    compressor = zlib.compressobj(wbits=31)  # 31: gzip container
    if whole:
        return [compressor.compress(b"".join(parts)) + compressor.flush()]
    out = [compressor.compress(p) + compressor.flush(zlib.Z_SYNC_FLUSH) for p in parts]
    out[-1] += compressor.flush()
    return out


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def _pieces(text: str, chunks: int | None) -> list[str]:
    """Split ``text`` into ``chunks`` near-equal pieces, or word by word (spaces leading)."""
    if chunks is None:
        words = text.split(" ")
        return [words[0]] + [" " + w for w in words[1:]]
    size = len(text)
    return [text[i * size // chunks : (i + 1) * size // chunks] for i in range(chunks)]


_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (fake upstream)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-fake***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, "
        "Requested 1. Please try again in 20s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_GEMINI_ERRORS = {
    400: ("INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    403: ("PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
    404: ("NOT_FOUND", "models/unknown is not found for API version v1beta."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan."),
    500: ("INTERNAL", "An internal error has occurred."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class FakeUpstream:
    """The fake provider. Use as a context manager, or ``start()``/``stop()``.

    Attributes a test may set at any time: ``reply`` (the answer text), ``chunks`` (content
    chunks per stream, None = one per word), ``usage`` (:class:`FakeUsage`), ``scenario``
    (default scenario string, same syntax as the header), ``delay_ms`` (for ``slow``),
    ``response_model`` (model named in answers; None echoes the request's),
    ``tool_arguments`` (JSON text of a tool call's arguments), ``embedding_dimensions``.

    Read: ``url`` (server root), ``base_url`` (``url + "/v1"``), ``requests`` (a copy of the
    :class:`RecordedRequest` list), ``disconnects`` (streams the client left before the end).
    """

    def __init__(
        self,
        *,
        reply: str = DEFAULT_REPLY,
        chunks: int | None = None,
        usage: FakeUsage | None = None,
        scenario: str = "",
        delay_ms: int = 50,
        response_model: str | None = None,
        tool_arguments: str = '{"location": "Paris, France", "unit": "celsius"}',
        embedding_dimensions: int = 8,
    ) -> None:
        self.reply = reply
        self.chunks = chunks
        self.usage = usage or FakeUsage()
        self.scenario = scenario
        self.delay_ms = delay_ms
        self.response_model = response_model
        self.tool_arguments = tool_arguments
        self.embedding_dimensions = embedding_dimensions
        self.url = ""
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._disconnects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None  # set by stop() to end stalls
        self._ids = itertools.count(1)
        self._server: contextlib.ExitStack | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/images/generations", self._images, methods=["POST"]),
                # Gemini: ``models/{model}:{method}`` is one path segment to Starlette.
                Route("/v1beta/models/{call}", self._gemini, methods=["POST"]),
                Route("/v1/models/{call}", self._gemini, methods=["POST"]),
                Route("/v1beta/openai/chat/completions", self._chat, methods=["POST"]),
                # Azure OpenAI's deployment URLs (``?api-version=`` is recorded, not checked).
                Route("/openai/deployments/{name}/chat/completions", self._chat, methods=["POST"]),
                Route("/openai/deployments/{name}/embeddings", self._embeddings, methods=["POST"]),
                # Any other path or method: OpenAI's JSON 404 (Starlette's own 405 is plain text).
                Route(
                    "/{path:path}",
                    self._not_found,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                ),
            ]
        )

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> FakeUpstream:
        logger = logging.getLogger("uvicorn.error")
        if _QUIET_CUT not in logger.filters:
            logger.addFilter(_QUIET_CUT)
        self._loop, self._released = None, None
        stack = contextlib.ExitStack()
        self.url = stack.enter_context(run_asgi_server(self.app, lifespan="off"))
        self._server = stack
        return self

    def stop(self) -> None:
        if self._loop is not None and self._released is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                self._loop.call_soon_threadsafe(self._released.set)  # release stalls
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what the test inspects ----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        with self._lock:
            return self._disconnects

    def reset(self) -> None:
        """Forget recorded requests and disconnects."""
        with self._lock:
            self._requests.clear()
            self._disconnects = 0

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests were received; return them."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} requests received, wanted {count}")
            return list(self._requests)

    def wait_for_disconnects(self, count: int = 1, timeout: float = 5.0) -> int:
        """Block until the fake saw ``count`` clients leave mid-response."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._disconnects >= count, timeout):
                raise TimeoutError(f"{self._disconnects} disconnects seen, wanted {count}")
            return self._disconnects

    def _count_disconnect(self) -> None:
        with self._lock:
            self._disconnects += 1
            self._lock.notify_all()

    async def _stall(self) -> None:
        if self._released is None:  # first stall on this server's loop
            self._loop = asyncio.get_running_loop()
            self._released = asyncio.Event()
        await self._released.wait()

    # -- request handling ----------------------------------------------------------------

    async def _receive(self, request: Request) -> tuple[Any, _Scenario]:
        body = await request.body()
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=request.headers,
            body=body,
            raw_path=request.scope.get("raw_path", b""),
        )
        with self._lock:
            self._requests.append(recorded)
            self._lock.notify_all()
        try:
            payload = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            payload = {}
        return payload, self._scenario(request.headers)

    def _scenario(self, headers: Headers) -> _Scenario:
        names: set[str] = set()
        chunks = self.chunks
        error_status = None
        spec = ",".join(filter(None, [self.scenario, headers.get("x-fake-scenario", "")]))
        for item in (s.strip() for s in spec.split(",")):
            if item.startswith("chunks="):
                chunks = int(item.removeprefix("chunks="))
            elif item.startswith("error-"):
                error_status = int(item.removeprefix("error-"))
            elif item:
                names.add(item)
        delay_ms = int(headers.get("x-fake-delay-ms", self.delay_ms))
        usage: FakeUsage | None = self.usage
        if "x-fake-usage" in headers:
            fields = dict(kv.strip().split("=", 1) for kv in headers["x-fake-usage"].split(","))
            usage = dataclasses.replace(self.usage, **{k: int(v) for k, v in fields.items()})
        if "no-usage" in names:
            usage = None
        problem = None
        if names - SCENARIOS:
            problem = f"unknown fake scenario(s) {sorted(names - SCENARIOS)} in {spec!r}"
            error_status = 400
        return _Scenario(frozenset(names), chunks, delay_ms / 1000, usage, error_status, problem)

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024x}"

    def _model(self, payload: Any, default: str) -> str:
        if self.response_model:
            return self.response_model
        model = payload.get("model") if isinstance(payload, dict) else None
        return model if isinstance(model, str) else default

    def _json(self, body: Any, scenario: _Scenario, *, status: int = 200) -> _Wire:
        if "malformed" in scenario:
            data = orjson.dumps(body)
            data = data[: max(1, len(data) // 2)]
        else:
            data = orjson.dumps(body)
        # Like OpenAI's edge, which hands out bot-management cookies with its answers.
        headers = {"x-request-id": self._id("req_"), "set-cookie": "__cf_bm=fake; Path=/"}
        return _Wire(self, [data], status=status, headers=headers, scenario=scenario, stream=False)

    def _stream(self, events: list[bytes], scenario: _Scenario) -> _Wire:
        if "malformed" in scenario and len(events) > 1:
            garbage = [b'data: {"id": "broken", "choices": [\n\n', b"this is not a field\n\n"]
            events = events[:1] + garbage + events[1:]
        headers = {"x-request-id": self._id("req_"), "cache-control": "no-cache"}
        return _Wire(self, events, media_type=SSE, headers=headers, scenario=scenario, stream=True)

    def _openai_error(self, status: int, scenario: _Scenario) -> _Wire:
        kind, code, message = _OPENAI_ERRORS.get(status, ("server_error", None, "Fake error."))
        message = scenario.problem or message
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return self._json(body, scenario, status=status)

    def _invalid_n(self, payload: dict[str, Any], scenario: _Scenario) -> _Wire:
        message = f"Invalid 'n': expected an integer from 1 to {MAX_CHOICES}, got {payload['n']!r}."
        body = {
            "error": {
                "message": message[:200],
                "type": "invalid_request_error",
                "param": "n",
                "code": "invalid_value",
            }
        }
        return self._json(body, scenario, status=400)

    async def _not_found(self, request: Request) -> _Wire:
        _, scenario = await self._receive(request)
        message = f"Invalid URL ({request.method} {request.url.path})"
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return self._json(body, scenario, status=404)

    async def _models(self, request: Request) -> _Wire:
        _, scenario = await self._receive(request)
        if scenario.error_status:
            return self._openai_error(scenario.error_status, scenario)
        names = ["gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small"]
        data = [
            {"id": n, "object": "model", "created": 1715367049, "owned_by": "system"} for n in names
        ]
        return self._json({"object": "list", "data": data}, scenario)

    async def _images(self, request: Request) -> _Wire:
        """DALL-E 3's answer (OpenAI's API reference): no usage, billed per image."""
        payload, scenario = await self._receive(request)
        if scenario.error_status:
            return self._openai_error(scenario.error_status, scenario)
        image = {
            "url": "https://oaidalleapiprodscus.blob.core.windows.net/private/img-1.png",
            "revised_prompt": str(payload.get("prompt", "")),
        }
        return self._json({"created": 1713833628, "data": [image]}, scenario)

    # -- chat completions ----------------------------------------------------------------

    async def _chat(self, request: Request) -> _Wire:
        payload, scenario = await self._receive(request)
        if scenario.error_status:
            return self._openai_error(scenario.error_status, scenario)
        tools = _called_tools(payload, scenario)
        stream = bool(payload.get("stream"))
        base = {
            "id": self._id("chatcmpl-"),
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(time.time()),
            "model": self._model(payload, "gpt-4o-mini"),
            "service_tier": "default",
            "system_fingerprint": "fp_fake0000",
        }
        n = _choice_count(payload)
        if n is None:
            return self._invalid_n(payload, scenario)
        if payload.get("stream"):
            return self._stream(
                list(self._chat_events(payload, scenario, base, n, tools)), scenario
            )
        if tools:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [self._tool_call(tool, index=None) for tool in tools],
            }
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": self.reply}
            finish = "stop"
        message |= {"refusal": None, "annotations": []}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ]
        body: dict[str, Any] = {**base, "choices": choices}
        if scenario.usage is not None:
            body["usage"] = scenario.usage.chat()
        return self._json(body, scenario)

    def _tool_call(self, tool: str, index: int | None, arguments: str | None = None) -> Any:
        call: dict[str, Any] = {
            "id": "call_" + self._id("")[-20:],
            "type": "function",
            "function": {
                "name": tool,
                "arguments": self.tool_arguments if arguments is None else arguments,
            },
        }
        return call if index is None else {"index": index, **call}

    def _chat_events(
        self, payload: Any, scenario: _Scenario, base: dict[str, Any], n: int, tools: list[str]
    ) -> Iterator[bytes]:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        usage_field = {"usage": None} if include_usage and scenario.usage is not None else {}
        text = self.tool_arguments if tools else self.reply

        def sse(body: dict[str, Any]) -> bytes:
            return _sse(json.dumps(body).encode() if "spaced-json" in scenario else body)

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = {**base, "choices": [choice]}
            return sse(body | usage_field)

        # As OpenAI streams parallel calls: one after the other, each named in its first delta.
        for at, tool in enumerate(tools or [None]):
            for i in range(n):
                if tool is not None:
                    call = self._tool_call(tool, index=at, arguments="")
                    opening = {"role": "assistant", "content": None, "refusal": None}
                    yield chunk(i, {**(opening if at == 0 else {}), "tool_calls": [call]})
                else:
                    yield chunk(i, {"role": "assistant", "content": "", "refusal": None})
            for piece in _pieces(text, scenario.chunks):
                for i in range(n):
                    if tool is not None:
                        argument = {"index": at, "function": {"arguments": piece}}
                        yield chunk(i, {"tool_calls": [argument]})
                    else:
                        yield chunk(i, {"content": piece})
        for i in range(n):
            yield chunk(i, {}, "tool_calls" if tools else "stop")
        if include_usage and scenario.usage is not None:
            empty = [{"index": 0, "delta": {}}] if "litellm-usage" in scenario else []
            yield sse(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": empty,
                    "usage": scenario.usage.chat(),
                }
            )
        yield b"data: [DONE]\n\n"

    # -- legacy completions --------------------------------------------------------------

    async def _completions(self, request: Request) -> _Wire:
        payload, scenario = await self._receive(request)
        if scenario.error_status:
            return self._openai_error(scenario.error_status, scenario)
        base = {
            "id": self._id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": self._model(payload, "gpt-3.5-turbo-instruct"),
            "system_fingerprint": None,
        }
        n = _choice_count(payload)
        if n is None:
            return self._invalid_n(payload, scenario)
        if not payload.get("stream"):
            choices = [
                {"text": self.reply, "index": i, "logprobs": None, "finish_reason": "stop"}
                for i in range(n)
            ]
            body = {**base, "choices": choices}
            if scenario.usage is not None:
                body["usage"] = scenario.usage.chat()
            return self._json(body, scenario)
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        usage_field = {"usage": None} if include_usage and scenario.usage is not None else {}
        events = []
        for piece, finish in [
            *((p, None) for p in _pieces(self.reply, scenario.chunks)),
            ("", "stop"),
        ]:
            for i in range(n):
                choice = {"text": piece, "index": i, "logprobs": None, "finish_reason": finish}
                events.append(_sse({**base, "choices": [choice]} | usage_field))
        if include_usage and scenario.usage is not None:
            events.append(_sse({**base, "choices": [], "usage": scenario.usage.chat()}))
        events.append(b"data: [DONE]\n\n")
        return self._stream(events, scenario)

    # -- embeddings ----------------------------------------------------------------------

    async def _embeddings(self, request: Request) -> _Wire:
        payload, scenario = await self._receive(request)
        if scenario.error_status:
            return self._openai_error(scenario.error_status, scenario)
        inputs = payload.get("input", "")
        count = (
            len(inputs)
            if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
            else 1
        )
        dims = int(payload.get("dimensions") or self.embedding_dimensions)
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for index in range(count):
            vector = [round((index + 1) * 0.001 + d * 0.01, 6) for d in range(dims)]
            embedding: Any = vector
            if as_base64:
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        body: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": self._model(payload, "text-embedding-3-small"),
        }
        if scenario.usage is not None:
            body["usage"] = scenario.usage.embeddings()
        return self._json(body, scenario)

    # -- responses API -------------------------------------------------------------------

    async def _responses(self, request: Request) -> _Wire:
        payload, scenario = await self._receive(request)
        if scenario.error_status:
            return self._openai_error(scenario.error_status, scenario)
        resp_id, msg_id = self._id("resp_"), self._id("msg_")
        model = self._model(payload, "gpt-4o-mini")
        if not payload.get("stream"):
            return self._json(
                self._response(payload, scenario, resp_id, msg_id, model, True), scenario
            )
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(seq), **fields}, event=kind)

        started = self._response(payload, scenario, resp_id, msg_id, model, False)
        item = {
            "id": msg_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events = [
            event("response.created", response=started),
            event("response.in_progress", response=started),
            event("response.output_item.added", output_index=0, item=item),
            event("response.content_part.added", **where, part=part),
        ]
        events += [
            event("response.output_text.delta", **where, delta=p, logprobs=[])
            for p in _pieces(self.reply, scenario.chunks)
        ]
        done = self._response(payload, scenario, resp_id, msg_id, model, True)
        events += [
            event("response.output_text.done", **where, text=self.reply, logprobs=[]),
            event("response.content_part.done", **where, part=part | {"text": self.reply}),
            event("response.output_item.done", output_index=0, item=done["output"][0]),
            event("response.completed", response=done),
        ]
        return self._stream(events, scenario)

    def _response(
        self, payload: Any, scenario: _Scenario, resp_id: str, msg_id: str, model: str, done: bool
    ) -> dict[str, Any]:
        output = []
        if done:
            content = {"type": "output_text", "text": self.reply, "annotations": [], "logprobs": []}
            output = [
                {
                    "id": msg_id,
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [content],
                }
            ]
        body: dict[str, Any] = {
            "id": resp_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed" if done else "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"),
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "user": None,
            "metadata": {},
        }
        if scenario.usage is not None:
            body["usage"] = scenario.usage.responses() if done else None
        return body

    # -- Anthropic messages --------------------------------------------------------------

    async def _messages(self, request: Request) -> _Wire:
        payload, scenario = await self._receive(request)
        if scenario.error_status:
            status = scenario.error_status
            kind = _ANTHROPIC_ERRORS.get(status, "api_error")
            body = {
                "type": "error",
                "error": {"type": kind, "message": scenario.problem or f"Fake {kind}."},
                "request_id": self._id("req_"),
            }
            return self._json(body, scenario, status=status)
        tools = _called_tools(payload, scenario)
        uses = [
            {"type": "tool_use", "id": "toolu_01" + self._id("")[-22:], "name": tool, "input": {}}
            for tool in tools
        ]
        message: dict[str, Any] = {
            "id": self._id("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": self._model(payload, "claude-haiku-4-5"),
            "content": [{"type": "text", "text": self.reply}],
            "stop_reason": "tool_use" if tools else "end_turn",
            "stop_sequence": None,
        }
        usage = scenario.usage.anthropic() if scenario.usage is not None else None
        if not payload.get("stream"):
            arguments = json.loads(self.tool_arguments)
            message["content"] += [use | {"input": arguments} for use in uses]
            return self._json(message | ({"usage": usage} if usage else {}), scenario)
        start = message | {"content": [], "stop_reason": None}
        if usage:
            start["usage"] = usage | {"output_tokens": 1}
        events = [
            _sse({"type": "message_start", "message": start}, event="message_start"),
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                event="content_block_start",
            ),
            _sse({"type": "ping"}, event="ping"),
        ]
        events += [
            _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": p},
                },
                event="content_block_delta",
            )
            for p in _pieces(self.reply, scenario.chunks)
        ]
        events.append(_sse({"type": "content_block_stop", "index": 0}, event="content_block_stop"))
        for index, use in enumerate(uses, start=1):
            events += self._anthropic_tool_use(index, use, scenario)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        }
        if usage:
            delta["usage"] = {"output_tokens": usage["output_tokens"]}
        events += [
            _sse(delta, event="message_delta"),
            _sse({"type": "message_stop"}, event="message_stop"),
        ]
        return self._stream(events, scenario)

    def _anthropic_tool_use(
        self, index: int, use: dict[str, Any], scenario: _Scenario
    ) -> list[bytes]:
        """One streamed ``tool_use`` block: its start, its input as JSON pieces, its stop."""
        start = {"type": "content_block_start", "index": index, "content_block": use}
        events = [_sse(start, event="content_block_start")]
        for piece in _pieces(self.tool_arguments, scenario.chunks):
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append(
                _sse(
                    {"type": "content_block_delta", "index": index, "delta": delta},
                    event="content_block_delta",
                )
            )
        stop = {"type": "content_block_stop", "index": index}
        return [*events, _sse(stop, event="content_block_stop")]

    # -- Gemini's native API -------------------------------------------------------------

    async def _gemini(self, request: Request) -> _Wire:
        _, scenario = await self._receive(request)
        model, _, method = request.path_params["call"].partition(":")
        if scenario.error_status:
            status = scenario.error_status
            kind, message = _GEMINI_ERRORS.get(status, ("INTERNAL", "Fake error."))
            error = {"code": status, "message": scenario.problem or message, "status": kind}
            return self._json({"error": error}, scenario, status=status)
        if method == "countTokens":
            usage = self.usage.gemini()
            counted = {"totalTokens": usage["promptTokenCount"]}
            return self._json(
                counted | {"promptTokensDetails": usage["promptTokensDetails"]}, scenario
            )
        if method not in ("generateContent", "streamGenerateContent"):
            error = {"code": 404, "message": f"Method {method} not found.", "status": "NOT_FOUND"}
            return self._json({"error": error}, scenario, status=404)
        base = {"modelVersion": self.response_model or model, "responseId": self._id("resp")[-22:]}
        if method == "generateContent":
            return self._json(self._gemini_chunk(base, self.reply, scenario, 1.0, True), scenario)
        pieces = _pieces(self.reply, scenario.chunks)
        chunks = [
            self._gemini_chunk(base, piece, scenario, (i + 1) / len(pieces), i == len(pieces) - 1)
            for i, piece in enumerate(pieces)
        ]
        if request.query_params.get("alt") == "sse":
            return self._stream(
                [b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks], scenario
            )
        # Without alt=sse: one JSON array, pretty-printed, sent element by element.
        elements = [json.dumps(c, indent=2).encode() for c in chunks]
        parts = [b"[" + elements[0], *(b"\r\n,\r\n" + e for e in elements[1:]), b"\r\n]"]
        headers = {"x-request-id": self._id("req_")}
        return _Wire(self, parts, headers=headers, scenario=scenario, stream=True)

    def _gemini_chunk(
        self, base: dict[str, Any], text: str, scenario: _Scenario, answered: float, last: bool
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        if last:
            candidate["finishReason"] = "STOP"
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if scenario.usage is not None:
            chunk["usageMetadata"] = scenario.usage.gemini(answered)
        return chunk | base


MAX_CHOICES = 128
"""OpenAI's bound on ``n``: a fuzzed ``n`` of a billion made the fake build a billion choices."""


def _choice_count(payload: dict[str, Any]) -> int | None:
    """``n`` as OpenAI reads it: absent or null is 1, an integer from 1 to 128 is itself,
    anything else (None here) is refused with a 400."""
    n = payload.get("n")
    if n is None:
        return 1
    if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CHOICES:
        return n
    return None


def _called_tools(payload: Any, scenario: _Scenario) -> list[str]:
    """The tools the answer calls: the first one (``tool-calls``), every one
    (``parallel-tool-calls``), or none."""
    tools = payload.get("tools") if isinstance(payload, dict) else None
    if not tools or not {"tool-calls", "parallel-tool-calls"} & scenario.names:
        return []
    names = [(tool.get("function") or {}).get("name") or tool.get("name") for tool in tools]
    names = [name for name in names if isinstance(name, str)]
    return names if "parallel-tool-calls" in scenario else names[:1]
