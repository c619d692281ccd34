"""Watching a streamed answer on its way to the client, and filing its exchange at the end."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal, Protocol

import orjson

from proxy.json_stream import JsonArraySplitter, element_json
from proxy.metering import priced_model, wants_estimate
from proxy.money import format_usd
from proxy.pricing import PriceBook
from proxy.records import CLIENT_DISCONNECTED, PROXY_SHUTTING_DOWN, Exchange
from proxy.session_costs import SessionCosts
from proxy.sse import SSESplitter, event_json
from proxy.tool_calls import may_start_tool_call
from proxy.upstream_client import UpstreamHTTPError, UpstreamResponse
from proxy.usage import StreamAccumulator, is_usage_only_chunk

_USAGE_NULL = b',"usage":null'
# The same null written with other JSON spacing (Python's json.dumps: ``, "usage": null``),
# or as the first key: read only for events whose bytes hold "usage" but not _USAGE_NULL.
_SPACED_USAGE_NULL = re.compile(
    rb',\s*"usage"\s*:\s*null(?=\s*[,}])|(?<=\{)\s*"usage"\s*:\s*null\s*,'
)
_USAGE_NAME = b'"usage"'
_DONE = b"data: [DONE]"
# Anthropic's last event; its first line, which text inside the JSON data cannot fake.
_MESSAGE_STOP = b"event: message_stop"
_USAGE_KEY = b'"usage'
# An event carrying counts: the bytes of a JSON key "usage" (Gemini's "usageMetadata") with
# an object for its value (inside a JSON string the quotes would be escaped, so text cannot
# fake it).
_USAGE_OBJECT = re.compile(rb'"usage(?:Metadata)?"\s*:\s*\{')
_LAZY_LIMIT = 256 * 1024
"""Bytes of unparsed events a stream may hold (about 1,000 chunks); past that, every event is
parsed as it comes, so 64 long streams hold 16 MB at most."""
_TAIL_EVENTS = 4
"""Last events read for the end of a stream (finish reason, message_stop) when the rest is
not needed."""


Framing = Literal["sse", "json-array"]
"""How a watched stream is cut into events: Server-Sent Events, or the elements of one JSON
array (Gemini's ``streamGenerateContent`` without ``alt=sse``)."""
_Parse = Callable[[bytes], tuple[str | None, dict[str, Any] | None, bool]]


class ExchangeSink(Protocol):
    def begin(self, item: Exchange) -> None:
        """Note a stream that is starting (so that a kill in its middle leaves a trace)."""

    def journal(self, item: Exchange) -> None:
        """Note the exchange as it stands (the client is about to see its end)."""

    def submit(self, item: Exchange) -> bool:
        """File the exchange's final version for its record."""


class StreamTee:
    """Passes a stream's bytes on and watches its events on the side.

    ``watch_events`` is off for non-SSE bodies (audio, files), which are passed on blind.
    With ``strip_usage`` the client did not ask for usage and the proxy did: the extra usage
    chunk and the ``"usage":null`` the upstream then adds to every chunk are taken out again,
    so bytes are handed on per whole event. Otherwise each chunk is handed on as it arrives.
    Before ``data: [DONE]`` (or at the end of streams without it) an SSE comment
    ``: tally {...}`` tells the client the tokens and cost; SSE clients ignore comments.
    Before the client gets the event that ends the answer (``[DONE]``, Anthropic's
    ``message_stop``, or else the end of the body: ``journal_end``) the exchange goes to the
    sink's journal, so a process killed right after still leaves what its record needs.

    Parsing every event's JSON was a quarter of a stream's cost. Only events that carry usage
    or may start a tool call are parsed on the way; the others are kept as bytes (up to
    ``_LAZY_LIMIT``) and read at the end only if a local estimate needs their text, else just
    the last few, for how the stream ended.

    Without ``tally`` no comment is added: clients that read every line as data (the
    google-genai SDK) take a comment for a broken chunk. ``framing`` says how the watched
    bytes are cut into events.
    """

    def __init__(
        self,
        response: UpstreamResponse,
        exchange: Exchange,
        *,
        watch_events: bool,
        strip_usage: bool,
        started: float,
        sink: ExchangeSink,
        prices: PriceBook,
        session_costs: SessionCosts,
        tally: bool = True,
        framing: Framing = "sse",
    ) -> None:
        self.response = response
        self.exchange = exchange
        self.watch_events = watch_events
        self.strip_usage = strip_usage
        self.started = started
        self.sink = sink
        self.prices = prices
        self.session_costs = session_costs
        self.splitter: SSESplitter | JsonArraySplitter = (
            SSESplitter() if framing == "sse" else JsonArraySplitter()
        )
        self._parse: _Parse = event_json if framing == "sse" else element_json
        self.accumulator = StreamAccumulator()
        self.unparsed: list[bytes] | None = []
        """Every event so far, in order, while the accumulator has seen only those read on the
        way; None once it sees them all."""
        self.unparsed_bytes = 0
        self.tallied = not tally
        self.ended_cleanly = False
        self.journaled = False
        self.answer_ended = False
        """An event that tells the client the answer is complete has been seen."""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes for the client; upstream failures end the stream and are noted."""
        exchange = self.exchange
        try:
            async for chunk in self.response.chunks():
                if exchange.ttft_ms is None:
                    exchange.ttft_ms = elapsed_ms(self.started)
                if not self.watch_events:
                    yield chunk
                    continue
                if self.strip_usage:
                    pieces, done_at = self._observe(self.splitter.feed(chunk))
                else:
                    pieces, done_at = self._pass_through(chunk)
                if done_at is not None and not self.tallied:
                    # Usage comes just before [DONE]: observed above, so the tally carries it.
                    pieces.insert(done_at, await self._tally_comment())
                if self.answer_ended:
                    self.journal_end()
                yield b"".join(pieces)
            if self.watch_events:
                # A last event without its blank line still counts (and still reaches the client).
                tail = self.splitter.remainder()
                pieces, _ = self._observe([tail]) if tail else ([], None)
                if self.strip_usage:
                    yield b"".join(pieces)
                if not self.tallied and self.response.is_success:
                    yield await self._tally_comment()
            self.ended_cleanly = True
        except UpstreamHTTPError as exc:
            exchange.error = f"upstream stream broken: {exc.kind}: {exc}"[:500]

    def _pass_through(self, chunk: bytes) -> tuple[list[bytes], int | None]:
        self._observe(self.splitter.feed(chunk))
        if self.tallied:
            return [chunk], None
        done_at = chunk.find(_DONE)
        if done_at < 0:
            return [chunk], None
        return [chunk[:done_at], chunk[done_at:]], 1

    def _observe(self, events: list[bytes]) -> tuple[list[bytes], int | None]:
        """Feed the accumulator; return the events to send and where ``[DONE]`` is among them."""
        kept: list[bytes] = []
        done_at: int | None = None
        for raw in events:
            event_type, event, done = self._read(raw)
            if done and done_at is None:
                done_at = len(kept)
            if done or raw.startswith(_MESSAGE_STOP):
                self.answer_ended = True
            if event is not None:
                self.accumulator.feed(event, event_type)
                if self.strip_usage and is_usage_only_chunk(event):
                    continue
            if self.strip_usage:
                raw = _without_usage_null(raw)
            kept.append(raw)
        return kept, done_at

    def _read(self, raw: bytes) -> tuple[str | None, dict[str, object] | None, bool]:
        """``event_json(raw)`` when the accumulator must see the event now; else the event is
        kept for later and only ``[DONE]`` is told."""
        unparsed = self.unparsed
        if unparsed is None or _carries_usage(raw) or may_start_tool_call(raw):
            if unparsed is not None:
                unparsed.append(raw)
            return self._parse(raw)
        unparsed.append(raw)
        self.unparsed_bytes += len(raw)
        if self.unparsed_bytes > _LAZY_LIMIT:
            self._read_all()  # this event included
        return None, None, _DONE in raw and self._parse(raw)[2]

    def _read_all(self) -> None:
        """Feed every event so far, in order, to a fresh accumulator; feed all from now on."""
        self.accumulator = _accumulated(self.unparsed or (), self._parse)
        self.unparsed = None

    def _settle(self) -> bool:
        """Make the accumulator complete enough for the record; return whether the stream
        said it was finished."""
        if self.unparsed is None:
            return self.accumulator.finished
        exchange = self.exchange
        exchange.provider_usage = self.accumulator.usage
        if self.response.is_success and wants_estimate(exchange):
            self._read_all()
            return self.accumulator.finished
        tail = _accumulated(self.unparsed[-_TAIL_EVENTS:], self._parse)
        self.unparsed = None
        self.accumulator.response_model = self.accumulator.response_model or tail.response_model
        return self.accumulator.finished or tail.finished

    async def _tally_comment(self) -> bytes:
        self.tallied = True
        exchange = self.exchange
        usage = self.accumulator.usage
        tally: dict[str, object] = {"request_id": exchange.id}
        if usage is not None:
            exchange.response_model = self.accumulator.response_model or exchange.response_model
            exchange.cost = self.prices.cost(
                priced_model(exchange), usage, provider=exchange.provider, at=exchange.created_at
            )
            tally |= {
                "usage_source": "provider",
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "cost_usd": None if exchange.cost is None else format_usd(exchange.cost.usd),
            }
            session_cost = await self.session_costs.running_total(exchange)
            if session_cost is not None:
                tally["session_cost_usd"] = format_usd(session_cost)
        return b": tally " + orjson.dumps(tally) + b"\n\n"

    def journal_end(self) -> None:
        """Journal the exchange as its record would be if the process died now: once, just
        before the client sees the end of the answer."""
        if self.journaled:
            return
        self.journaled = True
        exchange = self.exchange
        exchange.latency_ms = elapsed_ms(self.started)
        exchange.completed = exchange.error is None
        exchange.response_model = self.accumulator.response_model or exchange.response_model
        exchange.provider_usage = self.accumulator.usage
        exchange.tool_calls = self.accumulator.tool_calls
        self.sink.journal(exchange)

    async def finish(self, client_gone: bool, shutting_down: bool = False) -> None:
        """Called once however the stream ended: release the upstream, file the exchange."""
        exchange = self.exchange
        self.response.close()
        exchange.latency_ms = elapsed_ms(self.started)
        finished = self._settle() if self.watch_events else True
        # The connection ended cleanly; the answer is whole only if it said it was finished.
        exchange.completed = self.ended_cleanly and finished
        if not exchange.completed and exchange.error is None:
            if shutting_down:
                exchange.error = PROXY_SHUTTING_DOWN
            elif client_gone:
                exchange.error = CLIENT_DISCONNECTED
            else:
                exchange.error = "upstream ended the stream early"
        accumulator = self.accumulator
        exchange.response_model = accumulator.response_model or exchange.response_model
        exchange.provider_usage = accumulator.usage
        exchange.tool_calls = accumulator.tool_calls
        if self.response.is_success and wants_estimate(exchange):
            exchange.completion_text = accumulator.text
        else:
            exchange.request_body = None
        self.sink.submit(exchange)


def _accumulated(events: Iterable[bytes], parse: _Parse = event_json) -> StreamAccumulator:
    """A fresh accumulator fed ``events``, in order."""
    accumulator = StreamAccumulator()
    for raw in events:
        event_type, event, _ = parse(raw)
        if event is not None:
            accumulator.feed(event, event_type)
    return accumulator


def _without_usage_null(raw: bytes) -> bytes:
    """An event without the ``"usage": null`` that the proxy's include_usage made the
    upstream add; unchanged when it holds none, or more than one (then it is not ours)."""
    if raw.count(_USAGE_NULL) == 1:
        return raw.replace(_USAGE_NULL, b"")
    if _USAGE_NAME not in raw:
        return raw
    stripped, found = _SPACED_USAGE_NULL.subn(b"", raw)
    return stripped if found == 1 else raw


def _carries_usage(raw: bytes) -> bool:
    """Whether an event holds a usage object; cheap for the usual ``"usage":null`` or none."""
    keys = raw.count(_USAGE_KEY)
    if not keys:
        return False
    if keys == 1 and _USAGE_NULL in raw:
        return False
    return _USAGE_OBJECT.search(raw) is not None


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
