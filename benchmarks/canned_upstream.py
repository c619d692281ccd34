"""An upstream that costs almost nothing: canned OpenAI answers over raw asyncio sockets.

Run alone: ``python benchmarks/canned_upstream.py PORT``. Chat completions answer JSON with
usage, or an SSE stream of 25 content chunks (plus the usage chunk when the request asks for
``include_usage``), so that the benchmark measures the proxy and not the fake provider.
"""

from __future__ import annotations

import asyncio
import json
import sys

CHAT_JSON = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the canned upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 7,
            "total_tokens": 19,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
).encode()


def _chunk(delta: dict[str, object], finish: str | None, with_usage: bool) -> bytes:
    event: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if with_usage:
        event["usage"] = None
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _stream(with_usage: bool) -> bytes:
    parts = [_chunk({"role": "assistant", "content": ""}, None, with_usage)]
    parts += [_chunk({"content": f"w{i} "}, None, with_usage) for i in range(25)]
    parts.append(_chunk({}, "stop", with_usage))
    if with_usage:
        usage = {"prompt_tokens": 12, "completion_tokens": 25, "total_tokens": 37}
        final = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": usage,
        }
        parts.append(b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


STREAM_PLAIN = _stream(False)
STREAM_USAGE = _stream(True)


def _response(body: bytes, content_type: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type
    return head + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if b'"stream":true' in body.replace(b" ", b""):
                usage = b"include_usage" in body
                data = STREAM_USAGE if usage else STREAM_PLAIN
                writer.write(_response(data, b"text/event-stream"))
            else:
                writer.write(_response(CHAT_JSON, b"application/json"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
