"""The server's edge against hostile clients: a real ``tallyproxy serve`` and raw sockets.

The proxy runs under a 256 file-descriptor limit (``prlimit``), so that a few hundred
slowloris connections would be enough to exhaust it, as a thousand exhausted 1,024 before.
Several client addresses are loopback aliases (127.0.0.2, ...), all routed to ``lo``.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_process_server

DESCRIPTORS = 256
UPSTREAM_CONNECTIONS = 16
# What the proxy derives: the limit less the upstream pool less 64 reserved descriptors.
CLIENT_BOUND = DESCRIPTORS - UPSTREAM_CONNECTIONS - 64
PER_CLIENT = 32
HEADER_TIMEOUT = 5
PARTIAL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: tallyproxy\r\nX-Slow: "


@contextlib.contextmanager
def edge_proxy(tmp_path: Path, upstream: FakeUpstream, **server: Any) -> Iterator[int]:
    """A ``tallyproxy serve`` subprocess under the lowered descriptor limit; yields its port."""
    config = {
        "server": {
            "header_timeout": HEADER_TIMEOUT,
            "max_connections_per_client": PER_CLIENT,
            **server,
        },
        "upstream": {"url": upstream.base_url, "max_connections": UPSTREAM_CONNECTIONS},
        "database": {
            "url": f"sqlite+aiosqlite:///{tmp_path}/edge.db",
            "spool_dir": str(tmp_path / "spool"),
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        "prlimit",
        f"--nofile={DESCRIPTORS}:{DESCRIPTORS}",
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
    ]
    with run_process_server(argv, port, log_path=tmp_path / "serve.log"):
        yield port


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def read_all(sock: socket.socket, wait: float = 10.0) -> bytes:
    """What the server sent until it closed (a reset after its answer still leaves the answer)."""
    sock.settimeout(wait)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, json.loads(body) if body else None


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], Any]:
    with connect(port) as sock:
        sock.sendall(request)
        return answer(read_all(sock))


def answered(socks: list[socket.socket], count: int, within: float = 30.0) -> dict[int, int]:
    """Wait until ``count`` of ``socks`` got an answer; their statuses, by position."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + within
    while len(statuses) < count and time.monotonic() < deadline:
        waiting = [s for i, s in enumerate(socks) if i not in statuses]
        readable, _, _ = select.select(waiting, [], [], 0.5)
        for sock in readable:
            raw = read_all(sock)
            statuses[socks.index(sock)] = answer(raw)[0] if raw else 0
    assert len(statuses) == count, f"{len(statuses)} of {count} connections answered"
    return statuses


def still_open(socks: list[socket.socket]) -> bool:
    readable, _, _ = select.select(socks, [], [], 0)
    return not readable


def chat(port: int) -> str:
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0, timeout=10
    ) as sdk:
        reply = sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}]
        )
    return reply.choices[0].message.content or ""


def test_slowloris_connections_are_bounded_and_closed_and_others_are_served(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    with edge_proxy(tmp_path, fake_upstream) as port:
        log = (tmp_path / "serve.log").read_text()
        assert f"file descriptors: limit {DESCRIPTORS}" in log
        assert f"at most {CLIENT_BOUND} from clients" in log

        # One address opens 300 connections and never finishes its headers.
        attacker = [connect(port, "127.0.0.2") for _ in range(300)]
        for sock in attacker:
            sock.sendall(PARTIAL)
        refused = answered(attacker, 300 - PER_CLIENT)
        assert set(refused.values()) == {429}
        held = [sock for i, sock in enumerate(attacker) if i not in refused]
        assert len(held) == PER_CLIENT and still_open(held)
        # Meanwhile somebody else is served as usual.
        assert chat(port) == fake_upstream.reply
        # Past the header timeout every held connection is answered 408 and closed.
        assert set(answered(held, PER_CLIENT).values()) == {408}
        for sock in attacker:
            sock.close()

        # Eight addresses, 32 each: 256 connections would take every descriptor there is.
        many = [connect(port, f"127.0.0.{10 + n // PER_CLIENT}") for n in range(8 * PER_CLIENT)]
        for sock in many:
            sock.sendall(PARTIAL)
        over = answered(many, len(many) - CLIENT_BOUND)
        assert set(over.values()) == {503}
        held = [sock for i, sock in enumerate(many) if i not in over]
        assert len(held) == CLIENT_BOUND and still_open(held)
        assert set(answered(held, CLIENT_BOUND).values()) == {408}
        for sock in many:
            sock.close()
        # The process kept its descriptors: it still accepts and serves.
        assert chat(port) == fake_upstream.reply


MALFORMED = {
    "bad header bytes": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n", 400),
    "Content-Length with Transfer-Encoding": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "not HTTP": (b"GARBAGE\r\n\r\n", 400),
    "5,000 headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
        + b"\r\n",
        431,
    ),
    "a 100 kB header": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        431,
    ),
}
CODES = {400: "invalid_http", 431: "headers_too_large"}


def test_malformed_http_and_late_headers_are_answered_in_openai_shape(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    with edge_proxy(tmp_path, fake_upstream, header_timeout=1) as port:
        for case, (request, status) in MALFORMED.items():
            got, headers, body = exchange(port, request)
            assert (case, got) == (case, status)
            assert headers["content-type"] == "application/json"
            assert headers["connection"] == "close"
            assert body["error"]["code"] == CODES[status]
            assert body["error"]["type"] == "invalid_request_error"
            assert set(body["error"]) == {"message", "type", "param", "code"}
        assert exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200

        with connect(port) as sock:
            sock.sendall(PARTIAL)
            status, _, body = answer(read_all(sock, wait=30))
        assert status == 408
        assert body["error"]["code"] == "request_timeout"
        assert "server.header_timeout" in body["error"]["message"]

        with connect(port) as sock:  # not a byte sent: closed, nothing to answer
            assert read_all(sock, wait=30) == b""
    assert fake_upstream.requests == []


LIMIT = 32 * 1024 * 1024
OVER = 33 * 1024 * 1024
POST = b"POST /v1/chat/completions HTTP/1.%d\r\nHost: x\r\nContent-Type: application/json\r\n"


def upload(port: int, head: bytes, body: Iterator[bytes]) -> tuple[int, dict[str, str], Any]:
    """Send the whole request as a client does (the body to its end), then read the answer."""
    with connect(port) as sock:
        sock.sendall(head)
        for part in body:
            sock.sendall(part)  # a reset here is what clients saw instead of the 413
        return answer(read_all(sock))


def plain(size: int) -> Iterator[bytes]:
    for _ in range(size // 65536):
        yield b"x" * 65536


def chunked(size: int) -> Iterator[bytes]:
    for part in plain(size):
        yield b"%x\r\n%s\r\n" % (len(part), part)
    yield b"0\r\n\r\n"


def test_a_body_over_the_limit_gets_a_readable_413(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    length = b"Content-Length: %d\r\n" % OVER
    requests = {
        "Connection: close": (POST % 1 + length + b"Connection: close\r\n\r\n", plain(OVER)),
        "HTTP/1.0": (POST % 0 + length + b"\r\n", plain(OVER)),
        "chunked": (POST % 1 + b"Transfer-Encoding: chunked\r\n\r\n", chunked(OVER)),
    }
    with edge_proxy(tmp_path, fake_upstream) as port:
        for case, (head, body) in requests.items():
            status, headers, error = upload(port, head, body)
            assert (case, status) == (case, 413)
            assert headers["connection"] == "close"
            assert error["error"]["code"] == "request_too_large"
            assert str(LIMIT) in error["error"]["message"]

        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0, timeout=30
        ) as sdk:
            big = "x" * OVER
            with pytest.raises(openai.APIStatusError) as refused:
                sdk.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": big}]
                )
        assert refused.value.status_code == 413
        assert refused.value.code == "request_too_large"
        assert chat(port) == fake_upstream.reply
    assert len(fake_upstream.requests) == 1  # only the last, small one
