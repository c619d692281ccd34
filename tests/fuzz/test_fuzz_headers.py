"""Fuzzed headers, paths and raw HTTP.

Tag headers (``X-Session-Id``, ``X-User-Id``, ``X-Property-*``) carry any byte httpx lets
through; tallyproxy accepts them or answers a 400 in OpenAI's shape. What the HTTP client
refuses to send (CR/LF in a value, absurd sizes) goes over a raw socket. There uvicorn's
parser (httptools) answers malformed requests and headers past its limits itself, with a
plain-text ``400 Bad Request`` before the app runs: for those only "a 4xx, and the server
keeps serving" is asserted.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import FuzzProxy, check_answer, raw_exchange

FUZZ = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Header values as bytes: anything but CR, LF, NUL and outer whitespace, which h11 refuses
# to send (the raw socket test below sends those).
HEADER_BYTES = st.binary(max_size=300).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"").strip(b" \t")
) | st.sampled_from([b"", b"a b", b"\x7f", b"a" * 257, b"\xff\xfe", "caf\u00e9".encode()])
TAG_HEADERS = st.sampled_from(
    [
        "X-Session-Id",
        "X-User-Id",
        "Helicone-Session-Id",
        "Helicone-User-Id",
        "X-Property-Env",
        "X-Property-",
        "X-Property-" + "n" * 70,
        "Helicone-Property-Team",
    ]
)
CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


@FUZZ
@given(tags=st.lists(st.tuples(TAG_HEADERS, HEADER_BYTES), min_size=1, max_size=4))
def test_tag_headers_with_any_bytes(fuzz_proxy: FuzzProxy, tags: list[tuple[str, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), *((n.encode(), v) for n, v in tags)]
    try:
        response = fuzz_proxy.client.post("/v1/chat/completions", content=CHAT, headers=headers)
    except httpx.LocalProtocolError:
        return  # h11 refuses to send it (e.g. outer \x0b): the raw socket test sends such
    check_answer(fuzz_proxy, response, forwarded_ok=True)
    assert response.status_code in (200, 400), response.text
    fuzz_proxy.good_request()


def test_too_many_properties_is_400(fuzz_proxy: FuzzProxy) -> None:
    headers = {f"X-Property-P{i}": "v" for i in range(40)}
    response = fuzz_proxy.client.post(
        "/v1/chat/completions",
        content=CHAT,
        headers={"content-type": "application/json", **headers},
    )
    check_answer(fuzz_proxy, response, forwarded_ok=False)
    assert response.status_code == 400


@FUZZ
@given(
    path=st.text(alphabet=st.characters(codec="ascii", exclude_characters="?#"), max_size=40).map(
        lambda p: "/" + p.lstrip("/")
    ),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
)
def test_unknown_paths(fuzz_proxy: FuzzProxy, path: str, method: str) -> None:
    try:
        response = fuzz_proxy.client.request(method, path)
    except httpx.InvalidURL:
        return  # the client refuses to send it: nothing reaches the server
    check_answer(fuzz_proxy, response, forwarded_ok=False)
    assert response.status_code < 500 or path.startswith("/v1/"), response.text


@FUZZ
@given(
    name=st.sampled_from([b"X-Session-Id", b"X-User-Id", b"X-Property-Env", b"X-Other"]),
    before=st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b),
    injected=st.sampled_from(
        [
            b"\r\nX-Injected: yes",
            b"\nX-Injected: yes",
            b"\r\n\r\nGET /usage/requests HTTP/1.1\r\nHost: x",
            b"\rX-Injected: yes",
            b"\x00",
            b"\r\n Folded: continuation",
        ]
    ),
)
def test_header_injection_at_the_socket(
    fuzz_proxy: FuzzProxy, name: bytes, before: bytes, injected: bytes
) -> None:
    answer = raw_exchange(
        fuzz_proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n" + name + b": " + before + injected + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT,
    )
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    # A parser may refuse the request (400), tallyproxy may refuse the tag (400), or the
    # injected text may be read as one more harmless header: never a 5xx, never silence.
    assert status in (200, 400), answer[:300]
    assert b"Traceback" not in answer
    fuzz_proxy.good_request()


def test_absurd_header_sizes_are_refused_and_the_server_keeps_serving(
    fuzz_proxy: FuzzProxy,
) -> None:
    for request in (
        b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n",
    ):
        answer = raw_exchange(fuzz_proxy, request)
        # httptools answers these itself: "HTTP/1.1 400 Bad Request", text/plain.
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:300]
        assert b"Traceback" not in answer
        fuzz_proxy.good_request()


def test_huge_headers_do_not_break_the_server(fuzz_proxy: FuzzProxy) -> None:
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 50_000 + b"\r\n",
    ):
        answer = raw_exchange(fuzz_proxy, request)
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 4")), answer[:300]
        fuzz_proxy.good_request()


def test_huge_header_is_refused(fuzz_proxy: FuzzProxy) -> None:
    answer = raw_exchange(
        fuzz_proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Big: " + b"a" * 2_000_000 + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT,
    )
    if not answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")):
        # pytrace=False: see expect_status in test_fuzz_usage_api.py
        pytest.fail(repr(answer[:100]), pytrace=False)


def test_every_forwarded_answer_was_recorded(fuzz_proxy: FuzzProxy) -> None:
    """Runs after the fuzzers of this module: what they were promised is in the database."""
    fuzz_proxy.wait_recorded()


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH"])
def test_methods_the_api_does_not_have_answer_in_openai_shape(
    fuzz_proxy: FuzzProxy, method: str
) -> None:
    # Found by the fuzzer above: OPTIONS /v1/ came back as the fake upstream's plain-text 405.
    response = fuzz_proxy.client.request(method, "/v1/")
    check_answer(fuzz_proxy, response, forwarded_ok=False)
    assert response.status_code == 404
