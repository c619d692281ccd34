"""StreamTee over realistic provider streams: what the client gets, what the record keeps.

Only events carrying usage are parsed on the way; the rest are read at the end when an
estimate needs their text. These cases pin that the lazy reading changes nothing visible.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy import tee as tee_module
from proxy.records import Exchange
from proxy.tee import StreamTee


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {body}\n\n".encode()


def chat_chunk(content: str | None, finish: str | None = None, usage: Any = "absent") -> bytes:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "delta": {} if content is None else {"content": content},
             "finish_reason": finish}
        ],
    }  # fmt: skip
    if usage != "absent":
        chunk["usage"] = usage
    return sse(chunk)


WORDS = ["Hel", "lo", ", ", "wor", "ld", "!"]
USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
USAGE_CHUNK = sse(
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18",
     "choices": [], "usage": USAGE}
)  # fmt: skip
DONE = b"data: [DONE]\n\n"

# As OpenAI sends it when the proxy added include_usage: "usage":null on every chunk.
CHAT_WITH_INJECTED_USAGE = [
    *(chat_chunk(word, usage=None) for word in WORDS),
    chat_chunk(None, "stop", usage=None),
    USAGE_CHUNK,
    DONE,
]
CHAT_WITHOUT_USAGE = [*(chat_chunk(w) for w in WORDS), chat_chunk(None, "stop"), DONE]
CHAT_CUT_SHORT = [chat_chunk(w) for w in WORDS[:3]]
ANTHROPIC = [
    sse({"type": "message_start", "message": {"model": "claude-sonnet-4-20250514",
         "usage": {"input_tokens": 12, "output_tokens": 1}}}, "message_start"),
    *(sse({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": w}}, "content_block_delta") for w in WORDS),
    sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 6}}, "message_delta"),
    sse({"type": "message_stop"}, "message_stop"),
]  # fmt: skip


class FakeResponse:
    status_code = 200
    is_success = True

    def __init__(self, events: list[bytes], chunk_size: int) -> None:
        self.body = b"".join(events)
        self.chunk_size = chunk_size
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.chunk_size):
            yield self.body[start : start + self.chunk_size]

    def close(self) -> None:
        self.closed = True


class NoPrices:
    def cost(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoSessions:
    async def running_total(self, exchange: Exchange) -> None:
        return None


Journaled = list[tuple[bytes, Any, bool]]
"""For each journal call: the bytes the client had got, the usage and ``completed`` then."""


async def run_tee(
    events: list[bytes],
    *,
    strip_usage: bool,
    sampled: bool = False,
    chunk_size: int = 7,
    journaled: Journaled | None = None,
) -> tuple[bytes, Exchange]:
    journaled = journaled if journaled is not None else []
    exchange = Exchange(
        id="r1", created_at=datetime.now(UTC), method="POST", endpoint="/v1/chat/completions",
        upstream="http://upstream", stream=True, model="gpt-4o-mini", session_id=None,
        user_id=None, properties={}, sample_estimate=sampled, request_body={"messages": []},
    )  # fmt: skip
    filed: list[Exchange] = []
    sent_parts: list[bytes] = []

    class Sink:
        def begin(self, item: Exchange) -> None:
            raise AssertionError("the forwarder notes a stream's start, not the tee")

        def journal(self, item: Exchange) -> None:
            journaled.append((b"".join(sent_parts), item.provider_usage, item.completed))

        def submit(self, item: Exchange) -> bool:
            filed.append(item)
            return True

    response = FakeResponse(events, chunk_size)
    tee = StreamTee(
        response,  # type: ignore[arg-type]
        exchange,
        watch_events=True,
        strip_usage=strip_usage,
        started=0.0,
        sink=Sink(),
        prices=NoPrices(),  # type: ignore[arg-type]
        session_costs=NoSessions(),  # type: ignore[arg-type]
    )
    async for chunk in tee.chunks():
        sent_parts.append(chunk)
    sent = b"".join(sent_parts)
    await tee.finish(False)
    assert filed == [exchange] and response.closed
    return sent, exchange


def without_tally(sent: bytes) -> bytes:
    return re.sub(rb": tally [^\n]*\n\n", b"", sent)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
@pytest.mark.parametrize("sampled", [False, True])
async def test_injected_usage_is_removed_and_read(chunk_size: int, sampled: bool) -> None:
    sent, exchange = await run_tee(
        CHAT_WITH_INJECTED_USAGE, strip_usage=True, sampled=sampled, chunk_size=chunk_size
    )
    assert without_tally(sent) == b"".join(CHAT_WITHOUT_USAGE)
    assert b': tally {"request_id":"r1","usage_source":"provider"' in sent
    assert exchange.provider_usage is not None and exchange.provider_usage.total_tokens == 15
    assert exchange.response_model == "gpt-4o-mini-2024-07-18"
    assert exchange.completed and exchange.error is None
    # The text is read only for a drift sample; otherwise nothing about it is kept.
    assert exchange.completion_text == ("Hello, world!" if sampled else "")
    assert (exchange.request_body is not None) is sampled


@pytest.mark.parametrize(
    ("events", "text", "completed", "error"),
    [
        (CHAT_WITHOUT_USAGE, "Hello, world!", True, None),
        (CHAT_CUT_SHORT, "Hello, ", False, "upstream ended the stream early"),
    ],
)
async def test_stream_without_usage_keeps_its_text_for_the_estimate(
    events: list[bytes], text: str, completed: bool, error: str | None
) -> None:
    sent, exchange = await run_tee(events, strip_usage=False)
    assert without_tally(sent) == b"".join(events)
    assert exchange.provider_usage is None
    assert exchange.completion_text == text
    assert exchange.response_model == "gpt-4o-mini-2024-07-18"
    assert (exchange.completed, exchange.error) == (completed, error)


async def test_anthropic_stream_usage_and_end() -> None:
    sent, exchange = await run_tee(ANTHROPIC, strip_usage=False)
    assert without_tally(sent) == b"".join(ANTHROPIC)
    usage = exchange.provider_usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 6)
    assert exchange.response_model == "claude-sonnet-4-20250514"
    assert exchange.completed and exchange.completion_text == ""


async def test_long_stream_past_the_lazy_limit_is_read_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tee_module, "_LAZY_LIMIT", 300)
    words = [f"w{i} " for i in range(40)]
    events = [*(chat_chunk(w) for w in words), chat_chunk(None, "stop"), DONE]
    sent, exchange = await run_tee(events, strip_usage=False)
    assert without_tally(sent) == b"".join(events)
    assert exchange.completion_text == "".join(words)
    assert exchange.completed


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
@pytest.mark.parametrize(
    ("events", "strip_usage"),
    [(CHAT_WITH_INJECTED_USAGE, True), (CHAT_WITH_INJECTED_USAGE, False), (ANTHROPIC, False)],
)
async def test_the_journal_hears_of_the_answer_before_the_client_sees_its_end(
    events: list[bytes], strip_usage: bool, chunk_size: int
) -> None:
    journaled: Journaled = []
    sent, _ = await run_tee(
        events, strip_usage=strip_usage, chunk_size=chunk_size, journaled=journaled
    )
    assert len(journaled) == 1
    client_had, usage, completed = journaled[0]
    # The event that ends the answer ([DONE], message_stop) was not whole yet.
    assert events[-1] not in client_had and events[-1] in sent
    total = 18 if events is ANTHROPIC else 15
    assert usage is not None and usage.total_tokens == total and completed


async def test_a_stream_cut_short_is_not_journaled_as_answered() -> None:
    journaled: Journaled = []
    await run_tee(CHAT_CUT_SHORT, strip_usage=False, journaled=journaled)
    assert journaled == []


PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"


def recorded_events(name: str) -> list[bytes]:
    raw = (PAYLOADS / name).read_bytes()
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event]


@pytest.mark.parametrize(
    ("asked", "plain", "total"),
    [
        ("openai/chat_stream_include_usage.sse", "openai/chat_stream_no_usage.sse", 316),
        ("compat/litellm_stream_include_usage.sse", "compat/litellm_stream.sse", 22),
        ("compat/json_spacing_stream_include_usage.sse", "compat/json_spacing_stream.sse", 20),
    ],
)
@pytest.mark.parametrize("chunk_size", [5, 4096])
async def test_injected_usage_leaves_the_stream_the_client_asked_for(
    asked: str, plain: str, total: int, chunk_size: int
) -> None:
    sent, exchange = await run_tee(recorded_events(asked), strip_usage=True, chunk_size=chunk_size)
    assert without_tally(sent) == (PAYLOADS / plain).read_bytes()
    assert exchange.provider_usage is not None
    assert exchange.provider_usage.total_tokens == total


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (b'data: {"id":"c","choices":[],"usage":null}\n\n', b'data: {"id":"c","choices":[]}\n\n'),
        (b'data: {"id": "c", "usage": null}\n\n', b'data: {"id": "c"}\n\n'),
        (b'data: {"id": "c" , "usage" : null }\n\n', b'data: {"id": "c"  }\n\n'),
        (b'data: {"id":"c",\n"usage":\tnull}\n\n', b'data: {"id":"c"}\n\n'),
        (b'data: {"usage": null, "id": "c"}\n\n', b'data: { "id": "c"}\n\n'),
        # Not the upstream's null: text that mentions it, a usage object, two of them.
        (b'data: {"text": "\\"usage\\": null"}\n\n', b'data: {"text": "\\"usage\\": null"}\n\n'),
        (b'data: {"usage": {"total_tokens": 3}}\n\n', b'data: {"usage": {"total_tokens": 3}}\n\n'),
        (
            b'data: {"usage": null, "id": "c", "usage": null}\n\n',
            b'data: {"usage": null, "id": "c", "usage": null}\n\n',
        ),
        (b'data: {"usage": nullish}\n\n', b'data: {"usage": nullish}\n\n'),
    ],
)
def test_usage_null_is_removed_whatever_its_spacing(event: bytes, expected: bytes) -> None:
    assert tee_module._without_usage_null(event) == expected
