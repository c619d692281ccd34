"""One running proxy per module (SQLite and Postgres) for the fuzzers, and their invariants.

The proxy runs under uvicorn with httptools, as ``tallyproxy serve`` runs it, so that what
the HTTP parser refuses before the app sees it is tested too. Every fuzzed request is
followed by checks that hold whatever the input: no 500 from tallyproxy, no stack trace,
errors tallyproxy answers in OpenAI's shape, and every answer it forwarded has its record.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.fastpath import ProxyFastPath
from tests.e2e.conftest import proxy_settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer
from tests.support.servers import run_asgi_server

MAX_BODY_BYTES = 64 * 1024
PARSER_REFUSAL = "Invalid HTTP request received."
ERROR_KEYS = {"message", "type", "param", "code"}
TRACE_MARKERS = ("Traceback", 'File "', "internal error in tallyproxy")


@dataclass
class FuzzProxy:
    url: str
    client: httpx.Client = field(repr=False)
    recorded: list[str] = field(default_factory=list, repr=False)
    """Record ids the proxy promised (X-Tally-Request-Id on a forwarded answer)."""
    good: int = 0

    @property
    def host_port(self) -> tuple[str, int]:
        parsed = httpx.URL(self.url)
        assert parsed.port is not None
        return parsed.host, parsed.port

    def good_request(self) -> None:
        """A well-formed request: it must succeed and be recorded, whatever came before."""
        self.good += 1
        response = self.client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Session-Id": "fuzz-good"},
        )
        assert response.status_code == 200, response.text
        self.recorded.append(response.headers["x-tally-request-id"])

    def wait_recorded(self, within: float = 15.0) -> None:
        """Every promised record is stored, nothing was dropped, good requests add up."""
        deadline = time.monotonic() + within
        for record_id in self.recorded:
            while True:
                response = self.client.get(f"/usage/requests/{record_id}")
                if response.status_code == 200:
                    break
                assert time.monotonic() < deadline, f"record {record_id} never stored"
                time.sleep(0.05)
        stats = self.client.get("/readyz").json()
        assert stats["dropped_total"] == 0, stats
        if self.good:
            session = self.client.get("/usage/sessions/fuzz-good").json()
            assert session["requests"] >= self.good


def raw_exchange(proxy: FuzzProxy, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` as is on a fresh socket; return all the server sent until it closed."""
    host, port = proxy.host_port
    received = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


def check_answer(proxy: FuzzProxy, response: httpx.Response, *, forwarded_ok: bool) -> None:
    """The invariants of any answer to any input.

    ``forwarded_ok``: a 2xx answer with a request id is a promise of a record.
    """
    body = response.text
    assert response.status_code != 500 or "tallyproxy" not in body, body
    for marker in TRACE_MARKERS:
        assert marker not in body, body
    if 400 <= response.status_code < 500 and not refused_by_parser(response):
        assert_error_shape(response)
    if forwarded_ok and response.is_success and "x-tally-request-id" in response.headers:
        proxy.recorded.append(response.headers["x-tally-request-id"])


def refused_by_parser(response: httpx.Response) -> bool:
    """uvicorn's httptools parser refused the request (e.g. a control character in a header)
    and answered itself, in plain text, before tallyproxy saw it."""
    return response.status_code == 400 and response.text == PARSER_REFUSAL


def assert_error_shape(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    payload: Any = response.json()
    assert set(payload) == {"error"}, payload
    assert set(payload["error"]) == ERROR_KEYS, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]


@pytest.fixture(scope="module")
def fuzz_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def fuzz_proxy(request: pytest.FixtureRequest, fuzz_upstream: FakeUpstream) -> Iterator[FuzzProxy]:
    database_name: str | None = None
    server: PostgresServer | None = None
    if request.param == "sqlite":
        database_url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='tally-fuzz-')}/t.db"
    else:
        server = request.getfixturevalue("postgres_server")
        if not server.running:
            server.start()
        database_name = server.create_database()
        database_url = server.url(database_name)
    settings = proxy_settings(
        fuzz_upstream.base_url, database_url, server__max_body_bytes=MAX_BODY_BYTES
    )
    app = ProxyFastPath(create_app(settings))  # what `tallyproxy serve` runs
    with (
        run_asgi_server(app, graceful_timeout=5.0, loop="asyncio") as url,
        httpx.Client(base_url=url, timeout=15) as client,
    ):
        proxy = FuzzProxy(url, client)
        yield proxy
    if server is not None and database_name is not None and server.running:
        server.drop_database(database_name)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
