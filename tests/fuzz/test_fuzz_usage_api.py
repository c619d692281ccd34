"""Fuzzed query parameters and path ids on the usage API: a 200, a 404 for an unknown id,
or a 400 naming the parameter, all in OpenAI's shape; never a 500."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import FuzzProxy, check_answer

FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Query values as sent on the wire: percent-encoding of any bytes, NUL and invalid UTF-8 too.
ANY_TEXT = st.text(max_size=30) | st.sampled_from(
    ["", "0", "-1", "1001", "1e3", "9" * 40, "2026-13-45", "2026-01-01T00:00:00+99:00",
     "%00", "%ff%fe", "NaN", "property:", "property:env", "property:\x00",
     "day", "hour", "model", "session", "user", "endpoint", "MODEL", "=" * 9, "AAAA"]
)  # fmt: skip
PARAMS = st.dictionaries(
    st.sampled_from(
        ["limit", "cursor", "since", "until", "group_by", "session_id", "user_id", "model", "x"]
    ),
    ANY_TEXT,
    max_size=5,
)
PATHS = st.sampled_from(["/usage/requests", "/usage/sessions", "/usage/summary"])


@FUZZ
@given(path=PATHS, params=PARAMS)
def test_query_parameters(fuzz_proxy: FuzzProxy, path: str, params: dict[str, Any]) -> None:
    response = fuzz_proxy.client.get(path, params=params)
    check_answer(fuzz_proxy, response, forwarded_ok=False)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["param"] is not None


@FUZZ
@given(
    path=st.sampled_from(["/usage/requests", "/usage/sessions", "/usage/summary"]),
    raw_query=st.binary(max_size=40).map(lambda b: "".join(f"%{byte:02x}" for byte in b)),
    name=st.sampled_from(["limit", "cursor", "since", "group_by", "session_id", "model"]),
)
def test_percent_encoded_bytes(fuzz_proxy: FuzzProxy, path: str, raw_query: str, name: str) -> None:
    response = fuzz_proxy.client.get(f"{path}?{name}={raw_query}")
    check_answer(fuzz_proxy, response, forwarded_ok=False)
    assert response.status_code in (200, 400), response.text


@FUZZ
@given(
    kind=st.sampled_from(["requests", "sessions"]),
    ident=st.text(min_size=1, max_size=40) | st.sampled_from(["%00", "..", "%ff"]),
)
def test_ids_in_the_path(fuzz_proxy: FuzzProxy, kind: str, ident: str) -> None:
    response = fuzz_proxy.client.get(f"/usage/{kind}/" + quote(ident, safe=""))
    check_answer(fuzz_proxy, response, forwarded_ok=False)
    assert response.status_code in (200, 400, 404), response.text


def fresh_get(proxy: FuzzProxy, path: str, **options: Any) -> httpx.Response:
    # uvicorn drops the connection after the app raised: keep the shared client's pool clean.
    with httpx.Client(base_url=proxy.url, timeout=15) as client:
        return client.get(path, **options)


def expect_status(response: httpx.Response, expected: tuple[int, ...]) -> None:
    # No traceback to render: CPython 3.11.7 can crash pytest (SystemError, "AST constructor
    # recursion depth mismatch") parsing sources for a report after the hypothesis tests.
    if response.status_code not in expected:
        pytest.fail(f"{response.status_code}: {response.text}", pytrace=False)


@pytest.mark.parametrize("kind", ["requests", "sessions"])
def test_nul_in_an_id_is_a_400(fuzz_proxy: FuzzProxy, kind: str) -> None:
    # Postgres refuses NUL in a query; no stored id holds one (the writer replaces it).
    response = fresh_get(fuzz_proxy, f"/usage/{kind}/a%00b")
    expect_status(response, (400,))
    assert response.json()["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize("param", ["session_id", "user_id", "model"])
def test_nul_in_a_filter_is_a_400(fuzz_proxy: FuzzProxy, param: str) -> None:
    response = fresh_get(fuzz_proxy, "/usage/requests", params={param: "a\x00b"})
    expect_status(response, (400,))
