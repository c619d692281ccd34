"""The proxy's address without ``/v1``: a browser is sent to the dashboard, an SDK is told
to add ``/v1`` to its base URL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest

from tests.e2e.conftest import RunningProxy
from tests.support.fake_upstream import FakeUpstream

MESSAGES: Any = [{"role": "user", "content": "hi"}]
Call = Callable[[openai.AsyncOpenAI], Awaitable[object]]
CALLS: list[tuple[str, Call]] = [
    ("/chat/completions", lambda sdk: sdk.chat.completions.create(model="m", messages=MESSAGES)),
    ("/embeddings", lambda sdk: sdk.embeddings.create(model="m", input="hi")),
    ("/responses", lambda sdk: sdk.responses.create(model="m", input="hi")),
    ("/models", lambda sdk: sdk.models.list()),
    ("/models/org%2Fmodel", lambda sdk: sdk.models.retrieve("org/model")),
]


async def test_the_root_redirects_to_the_dashboard(sqlite_proxy: RunningProxy) -> None:
    response = await sqlite_proxy.api.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "dashboard/"  # relative: works under a path prefix
    page = await sqlite_proxy.api.get("/", follow_redirects=True)
    assert page.status_code == 200 and page.url.path == "/dashboard/"
    assert 'src="static/app.js"' in page.text


@pytest.mark.parametrize(("path", "call"), CALLS, ids=[path for path, _ in CALLS])
async def test_a_base_url_without_v1_is_a_404_that_says_to_add_it(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream, path: str, call: Call
) -> None:
    async with openai.AsyncOpenAI(
        base_url=sqlite_proxy.url, api_key="sk-test-client", max_retries=0
    ) as sdk:
        with pytest.raises(openai.NotFoundError) as raised:
            await call(sdk)
    error = raised.value
    assert error.code == "not_found" and error.type == "invalid_request_error"
    assert f"add /v1 to the client's base URL (base_url={sqlite_proxy.url}/v1" in error.message
    assert f"/v1{path}" in error.message
    assert fake_upstream.requests == []  # nothing was forwarded


async def test_other_unknown_paths_are_a_plain_404(sqlite_proxy: RunningProxy) -> None:
    response = await sqlite_proxy.api.get("/nothing/here")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found" and "/v1" not in error["message"]
