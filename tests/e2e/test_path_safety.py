"""Paths that would reach another upstream target never leave the proxy.

An Azure route (deployment URLs, the proxy's own ``api-key``, a configured api-version) and
a virtual key allowed only the ``cheap`` deployment: every way of turning its request into
one for ``expensive``, or of replacing the api-version, is a 400 in OpenAI's shape, and the
provider receives nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.access.conftest import ADMIN, ADMIN_TOKEN, issue_key
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream
from tests.support.raw_http import error_of, raw_request

API_VERSION = "2024-10-21"
CHEAP = b'{"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
async def azure_proxy(fake_upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[RunningProxy]:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        admin_token=ADMIN_TOKEN,
        upstreams=[
            {
                "name": "azure",
                "kind": "azure",
                "url": fake_upstream.url,
                "api_version": API_VERSION,
                "api_key": "azure-proxy-key",
            }
        ],
    )
    async with start_proxy(settings) as running:
        running.api.headers.update(ADMIN)
        yield running


async def send(
    proxy: RunningProxy, key: str, path: bytes, body: bytes = CHEAP
) -> tuple[int, bytes]:
    headers = [b"Content-Type: application/json", f"Authorization: Bearer {key}".encode()]
    return await raw_request(proxy.url, b"POST", path, headers, body)


async def test_the_cheap_deployment_is_reached_with_the_configured_api_version(
    azure_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    key = (await issue_key(azure_proxy.api, models=["cheap*"]))["key"]
    status, content = await send(azure_proxy, key, b"/v1/chat/completions?api-version=evil")
    assert status == 200, content
    [received] = fake_upstream.requests
    assert received.path == "/openai/deployments/cheap/chat/completions"
    assert received.raw_path == b"/openai/deployments/cheap/chat/completions"
    assert received.query == f"api-version={API_VERSION}"
    assert received.headers["api-key"] == "azure-proxy-key"


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/..%2Fexpensive/chat/completions",
        b"/v1/..%2fexpensive/chat/completions",
        b"/v1/../../deployments/expensive/chat/completions",
        b"/v1/%2e%2e/expensive/chat/completions",
        b"/v1/%2E%2e/%2e./expensive/chat/completions",
        b"/v1/./chat/completions",
        b"/v1/chat/completions%3Fapi-version=2020-01-01",
        b"/v1/chat/completions%3fapi-version=2020-01-01&x=",
        b"/v1/chat/completions%23",
        b"/v1/..%5Cexpensive/chat/completions",
        b"/v1/..\\expensive/chat/completions",
        b"/v1/%252e%252e/expensive/chat/completions",
        b"/v1/chat/completions%00",
        b"/v1/chat/completions%0d%0aX-Injected:%201",
        b"/v1/chat/completions/%zz",
    ],
)
async def test_paths_that_change_the_target_are_refused_before_the_provider(
    azure_proxy: RunningProxy, fake_upstream: FakeUpstream, path: bytes
) -> None:
    key = (await issue_key(azure_proxy.api, models=["cheap*"]))["key"]
    status, content = await send(azure_proxy, key, path)
    assert status == 400, content
    error = error_of(content)
    assert error["param"] == "path"
    assert error["type"] == "invalid_request_error"
    assert str(error["message"]).startswith("invalid path")
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "model", ["cheap/../expensive", "cheap%2F..%2Fexpensive", "cheap?api-version=2020-01-01"]
)
async def test_a_model_name_cannot_smuggle_a_path_into_the_deployment_url(
    azure_proxy: RunningProxy, fake_upstream: FakeUpstream, model: str
) -> None:
    # The key allows cheap*, which these names match: the URL they would make is refused.
    key = (await issue_key(azure_proxy.api, models=["cheap*"]))["key"]
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}'
    status, content = await send(azure_proxy, key, b"/v1/chat/completions", body.encode())
    assert status == 400, content
    assert error_of(content)["param"] == "model"
    assert fake_upstream.requests == []


async def test_nothing_is_recorded_for_a_refused_path(
    azure_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    key = (await issue_key(azure_proxy.api))["key"]
    status, _ = await send(azure_proxy, key, b"/v1/..%2Fexpensive/chat/completions")
    assert status == 400
    status, _ = await send(azure_proxy, key, b"/v1/chat/completions")
    assert status == 200
    [record] = await azure_proxy.records(1)
    assert record["endpoint"] == "/v1/chat/completions"


async def test_an_encoded_slash_alone_is_forwarded_still_encoded(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    # The openai SDK percent-encodes '/' in an id: models.retrieve("org/model").
    with pytest.raises(openai.NotFoundError):
        await sqlite_proxy.sdk.models.retrieve("org/model")
    [received] = fake_upstream.requests
    assert received.raw_path == b"/v1/models/org%2Fmodel"
