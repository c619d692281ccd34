"""Session and user ids in any script: sent as UTF-8 header bytes, stored and found by name.

The openai SDK cannot send a non-ASCII value in ``extra_headers`` (``str`` or ``bytes``: it
re-encodes every per-request header as ASCII and raises ``UnicodeEncodeError`` before
sending). Headers of its ``http_client`` are sent as given, so that is the way in.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.e2e.conftest import RunningProxy
from tests.support.fake_upstream import FakeUpstream
from tests.support.raw_http import error_of, raw_request

MESSAGES = [{"role": "user", "content": "hi"}]
IDS = ["ü-session", "セッション-一", "🚀-launch", "👨\u200d👩\u200d👧 family"]


async def session(proxy: RunningProxy, session_id: str) -> httpx.Response:
    # httpx percent-encodes the path as UTF-8, as a browser or curl would.
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        response = await proxy.api.get(f"/usage/sessions/{session_id}")
        if response.status_code != 404 or asyncio.get_running_loop().time() > deadline:
            return response
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("value", ["ü-session", "ü-session".encode()])
async def test_the_sdk_refuses_non_ascii_extra_headers_before_sending(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream, value: str | bytes
) -> None:
    with pytest.raises(UnicodeEncodeError):
        await sqlite_proxy.sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"X-Session-Id": value},  # type: ignore[dict-item]
        )
    assert fake_upstream.requests == []


@pytest.mark.parametrize("session_id", IDS)
async def test_utf8_ids_through_the_sdk_are_stored_and_found_by_their_real_name(
    proxy: RunningProxy, fake_upstream: FakeUpstream, session_id: str
) -> None:
    raw = session_id.encode()
    tagged = type(proxy.sdk._client)(headers={"X-Session-Id": raw, "X-User-Id": raw})
    async with openai.AsyncOpenAI(
        base_url=proxy.base_url, api_key="sk-test-client", max_retries=0, http_client=tagged
    ) as sdk:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert fake_upstream.requests[-1].headers.get("x-session-id") is None
    found = await session(proxy, session_id)
    assert found.status_code == 200, found.text
    assert found.json()["session_id"] == session_id
    assert found.json()["user_id"] == session_id
    [record] = await proxy.records(1, session_id=session_id)
    assert record["user_id"] == session_id
    # The tags never reach the provider.
    assert "x-session-id" not in fake_upstream.requests[-1].headers


CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


async def tagged_request(proxy: RunningProxy, line: bytes) -> tuple[int, bytes]:
    headers = [b"Content-Type: application/json", b"Authorization: Bearer sk-client", line]
    return await raw_request(proxy.url, b"POST", b"/v1/chat/completions", headers, CHAT)


async def test_raw_utf8_header_bytes_are_read_as_utf8(sqlite_proxy: RunningProxy) -> None:
    status, _ = await tagged_request(sqlite_proxy, "X-Session-Id: ü-session".encode())
    assert status == 200
    found = await session(sqlite_proxy, "ü-session")
    assert found.status_code == 200, found.text
    # Not the bytes read as latin-1, which is how it used to be stored.
    assert (await sqlite_proxy.api.get("/usage/sessions/Ã¼-session")).status_code == 404


@pytest.mark.parametrize(
    "line",
    [b"X-Session-Id: \xfc-session\r\n", b"X-User-Id: caf\xc3\r\n", b"X-Property-T: \xff\r\n"],
)
async def test_invalid_utf8_is_a_400_naming_the_header_and_nothing_is_stored(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream, line: bytes
) -> None:
    status, content = await tagged_request(sqlite_proxy, line)
    assert status == 400
    error = error_of(content)
    assert "UTF-8" in str(error["message"])
    assert error["param"] == line.split(b":")[0].decode().lower()
    assert fake_upstream.requests == []
    assert (await sqlite_proxy.api.get("/usage/requests")).json()["data"] == []
