"""Fuzzed request bodies: any bytes, any content type, JSON of any shape, oversized.

tallyproxy answers what it cannot read with a 400 (or 413 past ``server.max_body_bytes``)
in OpenAI's error shape, forwards the rest, and records every answer it forwarded.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import (
    MAX_BODY_BYTES,
    FuzzProxy,
    assert_error_shape,
    check_answer,
    raw_exchange,
)

FUZZ = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/vnd.api+json",
        "",
        "JSON",
        "application/octet-stream",
    ]
)
ENDPOINTS = st.sampled_from(
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
)
# Text with what databases and parsers dislike: NUL, controls, lone surrogates, emoji.
NASTY_TEXT = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()), max_size=40
) | st.sampled_from(["\x00", "a\x00b", "\ud800", "\u202e", "💸", " ", "x" * 5000])
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | NASTY_TEXT
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NASTY_TEXT, inner, max_size=3),
    max_leaves=8,
)
KNOWN_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "model": JSON_VALUES | st.just("gpt-4o-mini"),
        "messages": JSON_VALUES | st.just([{"role": "user", "content": "hi"}]),
        "input": JSON_VALUES,
        "prompt": JSON_VALUES,
        "stream": JSON_VALUES | st.booleans(),
        "stream_options": JSON_VALUES | st.just({"include_usage": False}),
        "user": JSON_VALUES,
        "n": JSON_VALUES,
    },
)


def post(proxy: FuzzProxy, path: str, content: bytes, content_type: str) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return proxy.client.post(path, content=content, headers=headers)


@FUZZ
@given(endpoint=ENDPOINTS, content=st.binary(max_size=2048), content_type=CONTENT_TYPES)
def test_any_bytes_with_any_content_type(
    fuzz_proxy: FuzzProxy, endpoint: str, content: bytes, content_type: str
) -> None:
    response = post(fuzz_proxy, endpoint, content, content_type)
    check_answer(fuzz_proxy, response, forwarded_ok=True)
    fuzz_proxy.good_request()


@FUZZ
@given(endpoint=ENDPOINTS, payload=KNOWN_FIELDS | JSON_VALUES, ascii_only=st.booleans())
def test_json_of_any_shape(
    fuzz_proxy: FuzzProxy, endpoint: str, payload: Any, ascii_only: bool
) -> None:
    # ensure_ascii escapes lone surrogates (\ud800), which a UTF-8 encoder would refuse.
    text = json.dumps(payload, ensure_ascii=ascii_only, allow_nan=True)
    content = text.encode("utf-8", errors="surrogatepass")
    response = post(fuzz_proxy, endpoint, content, "application/json")
    check_answer(fuzz_proxy, response, forwarded_ok=True)
    fuzz_proxy.good_request()


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@FUZZ
@given(
    prefix=st.sampled_from([b'{"model": "', b'{"model": "gpt-4o-mini", "user": "', b'["']),
    junk=st.binary(min_size=1, max_size=64).filter(_not_utf8),
)
def test_non_utf8_bytes_in_json(fuzz_proxy: FuzzProxy, prefix: bytes, junk: bytes) -> None:
    content = prefix + junk + b'"}'
    response = post(fuzz_proxy, "/v1/chat/completions", content, "application/json")
    check_answer(fuzz_proxy, response, forwarded_ok=True)
    assert response.status_code == 400  # orjson refuses invalid UTF-8
    fuzz_proxy.good_request()


def test_body_over_the_limit_is_413(fuzz_proxy: FuzzProxy) -> None:
    big = b'{"model": "gpt-4o-mini", "x": "' + b"a" * MAX_BODY_BYTES + b'"}'
    response = post(fuzz_proxy, "/v1/chat/completions", big, "application/json")
    assert response.status_code == 413
    assert_error_shape(response)
    assert response.json()["error"]["code"] == "request_too_large"
    fuzz_proxy.good_request()


def test_chunked_body_over_the_limit_is_413(fuzz_proxy: FuzzProxy) -> None:
    def pieces() -> Any:
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"a" * 1024

    # No Content-Length: the limit must hold while reading, not only on the declared size.
    response = proxy_stream_post(fuzz_proxy, pieces())
    assert response.status_code == 413
    assert_error_shape(response)
    fuzz_proxy.good_request()


def proxy_stream_post(proxy: FuzzProxy, content: Any) -> httpx.Response:
    return proxy.client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )


def test_declared_length_far_over_the_limit_is_413_without_reading(fuzz_proxy: FuzzProxy) -> None:
    # A client that announces 10 GB and sends nothing: answered at once, not waited for.
    answer = raw_exchange(
        fuzz_proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"request_too_large"' in answer
    fuzz_proxy.good_request()


def test_nul_in_the_body_user_or_model_is_still_recorded(fuzz_proxy: FuzzProxy) -> None:
    # Postgres text cannot hold NUL: the record must not be refused (and dropped) for it.
    for payload in (
        {"model": "gpt-4o-mini", "messages": [], "user": "al\x00ice"},
        {"model": "gpt-4o\x00-mini", "messages": []},
    ):
        response = fuzz_proxy.client.post("/v1/chat/completions", json=payload)
        check_answer(fuzz_proxy, response, forwarded_ok=True)
    fuzz_proxy.wait_recorded()


def test_every_forwarded_answer_was_recorded(fuzz_proxy: FuzzProxy) -> None:
    """Runs after the fuzzers of this module: what they were promised is in the database."""
    assert fuzz_proxy.good > 0
    fuzz_proxy.wait_recorded()
