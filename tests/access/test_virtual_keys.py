"""Virtual keys end to end: the openai SDK with a tp- key, through a running proxy."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY, issue_key
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]


def _sdk(proxy: RunningProxy, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


async def test_a_virtual_key_is_replaced_by_the_upstream_key_and_recorded_by_id(
    keyed_proxy: RunningProxy,
    fake_upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy")
    issued = await issue_key(keyed_proxy.api, name="billing", user="alice")
    secret = issued["key"]
    assert secret.startswith("tp-") and issued["prefix"] == secret[:10]
    async with _sdk(keyed_proxy, secret) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, user="mallory"
        )
    upstream = fake_upstream.wait_for_requests(1)[0]
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert secret not in str(upstream.headers.items()) and secret.encode() not in upstream.body
    record = await keyed_proxy.record(raw.headers["x-tally-request-id"])
    assert record["key_id"] == issued["id"]
    assert record["user_id"] == "alice"  # the key's user, whatever the request says
    listing = (await keyed_proxy.api.get("/admin/keys", headers=ADMIN)).json()["data"]
    assert [k["id"] for k in listing] == [issued["id"]] and "key" not in listing[0]
    assert secret not in str(listing)
    assert secret not in caplog.text


async def test_revocation_refuses_the_key_at_once(keyed_proxy: RunningProxy) -> None:
    issued = await issue_key(keyed_proxy.api)
    async with _sdk(keyed_proxy, issued["key"]) as sdk:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        revoked = await keyed_proxy.api.delete(f"/admin/keys/{issued['id']}", headers=ADMIN)
        assert revoked.status_code == 200
        with pytest.raises(openai.AuthenticationError) as refused:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.code == "invalid_api_key"
    listing = (await keyed_proxy.api.get("/admin/keys", headers=ADMIN)).json()["data"]
    assert listing[0]["revoked_at"] is not None
    missing = await keyed_proxy.api.delete("/admin/keys/nope", headers=ADMIN)
    assert missing.status_code == 404


async def test_unknown_and_expired_keys_are_refused(
    keyed_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = await issue_key(keyed_proxy.api, expires_at=past)
    for key in ("tp-not-a-key", expired["key"]):
        async with _sdk(keyed_proxy, key) as sdk:
            with pytest.raises(openai.AuthenticationError) as refused:
                await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert refused.value.code == "invalid_api_key"
    assert fake_upstream.requests == []


async def test_a_key_calls_only_its_models(
    keyed_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    issued = await issue_key(keyed_proxy.api, models=["gpt-4o-mini", "text-embedding-*"])
    async with _sdk(keyed_proxy, issued["key"]) as sdk:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await sdk.embeddings.create(model="text-embedding-3-small", input="x")
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert refused.value.code == "model_not_allowed"
    assert len(fake_upstream.requests) == 2


async def test_pass_through_keeps_working_beside_virtual_keys(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(fake_upstream.base_url, f"sqlite+aiosqlite:///{tmp_path}/t.db")
    async with start_proxy(settings) as proxy:
        await proxy.sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert fake_upstream.requests[0].headers["authorization"] == "Bearer sk-test-client"
        issued = await issue_key(proxy.api)  # no admin token configured: the API is open
        async with _sdk(proxy, issued["key"]) as sdk:
            with pytest.raises(openai.InternalServerError) as refused:
                await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # The upstream has no key of its own: the virtual key must not be sent in its place.
    assert "'default' has no api_key" in refused.value.message
    assert len(fake_upstream.requests) == 1


async def test_required_virtual_keys_refuse_provider_keys(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        upstream__api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN,
        access__require_virtual_keys=True,
    )
    async with start_proxy(settings) as proxy:
        with pytest.raises(openai.AuthenticationError):
            await proxy.sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        issued = await issue_key(proxy.api)
        async with _sdk(proxy, issued["key"]) as sdk:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(fake_upstream.requests) == 1


async def test_a_key_reads_only_its_own_usage(keyed_proxy: RunningProxy) -> None:
    mine, theirs = await issue_key(keyed_proxy.api), await issue_key(keyed_proxy.api)
    ids = {}
    for issued in (mine, theirs):
        async with _sdk(keyed_proxy, issued["key"]) as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Session-Id": "s"}
            )
            ids[issued["id"]] = raw.headers["x-tally-request-id"]
    admin = httpx.AsyncClient(base_url=keyed_proxy.url, headers=ADMIN)
    as_key = httpx.AsyncClient(
        base_url=keyed_proxy.url, headers={"Authorization": f"Bearer {mine['key']}"}
    )
    async with admin, as_key:
        await keyed_proxy.record(ids[theirs["id"]])  # both stored
        everything = (await admin.get("/usage/requests")).json()["data"]
        assert len(everything) == 2
        own = (await as_key.get("/usage/requests")).json()["data"]
        assert [r["id"] for r in own] == [ids[mine["id"]]]
        assert (await as_key.get(f"/usage/requests/{ids[mine['id']]}")).status_code == 200
        assert (await as_key.get(f"/usage/requests/{ids[theirs['id']]}")).status_code == 404
        summary = (await as_key.get("/usage/summary", params={"group_by": "model"})).json()
        assert [row["requests"] for row in summary["data"]] == [1]
        assert (await as_key.get("/usage/sessions")).status_code == 403
        assert (await as_key.get("/usage/sessions/s")).status_code == 403
        assert (await admin.get("/usage/sessions/s")).json()["requests"] == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/usage/requests"),
        ("GET", "/usage/requests/0"),
        ("GET", "/usage/sessions"),
        ("GET", "/usage/sessions/s"),
        ("GET", "/usage/summary?group_by=model"),
        ("GET", "/usage/drift"),
        ("GET", "/usage/prices?model=gpt-4o"),
        ("GET", "/metrics"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("DELETE", "/admin/keys/x"),
    ],
)
async def test_every_api_endpoint_needs_the_admin_token(
    keyed_proxy: RunningProxy, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer tp-nokey"}):
        async with httpx.AsyncClient(base_url=keyed_proxy.url) as anonymous:
            response = await anonymous.request(method, path, headers=headers)
        # A tallyproxy key, known or not, is refused outright (403) where only the admin goes.
        assert response.status_code in (401, 403), (headers, response.text)
        code = response.json()["error"]["code"]
        assert code in ("invalid_admin_token", "invalid_api_key", "forbidden")
    response = await keyed_proxy.api.request(method, path, headers=ADMIN, json={"name": "x"})
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/usage/drift"),
        ("GET", "/usage/prices?model=gpt-4o"),
        ("GET", "/metrics"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("DELETE", "/admin/keys/x"),
    ],
)
async def test_a_virtual_key_cannot_reach_admin_endpoints(
    keyed_proxy: RunningProxy, method: str, path: str
) -> None:
    issued = await issue_key(keyed_proxy.api)
    headers = {"Authorization": f"Bearer {issued['key']}"}
    response = await keyed_proxy.api.request(method, path, headers=headers, json={"name": "x"})
    assert response.status_code == 403, response.text
