"""The openai SDK's AzureOpenAI client through the proxy: its deployment paths, api-version and
api-key header, served as the OpenAI operations they stand for, to either kind of upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say hello."}
]
CLIENT_VERSION = "2024-06-01"
ROUTE_VERSION = "2024-10-21"


@pytest.fixture
def azure_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply="From Azure.", usage=FakeUsage(prompt_tokens=40)) as fake:
        yield fake


@pytest.fixture
async def proxy(
    fake_upstream: FakeUpstream, azure_upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[RunningProxy]:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/azure.db",
        upstreams=[
            {
                "name": "azure",
                "kind": "azure",
                "url": azure_upstream.url,
                "api_version": ROUTE_VERSION,
                "deployments": {"gpt-4o": "prod-4o"},
                "models": ["gpt-4o", "text-embedding-3-large"],
            },
            {"name": "openai", "kind": "openai", "url": fake_upstream.base_url},
        ],
    )
    async with start_proxy(settings) as running:
        yield running


def azure_client(proxy: RunningProxy, **where: str) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        **(where or {"azure_endpoint": proxy.url}),  # type: ignore[arg-type]
        api_version=CLIENT_VERSION,
        api_key="az-client-key",
        max_retries=0,
    )


@pytest.mark.parametrize("where", ["azure_endpoint", "base_url"])
async def test_azure_client_to_an_openai_upstream(
    proxy: RunningProxy, fake_upstream: FakeUpstream, where: str
) -> None:
    """``/openai/deployments/<d>/<op>`` (or ``/v1/deployments/...``) reaches an OpenAI
    upstream as ``/v1/<op>``, without api-version, the api-key as a bearer key."""
    url = proxy.url if where == "azure_endpoint" else proxy.base_url
    async with azure_client(proxy, **{where: url}) as client:
        answer = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert answer.choices[0].message.content == fake_upstream.reply
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
        ]
        embedded = await client.embeddings.create(model="text-embedding-3-small", input="a")
    assert len(embedded.data) == 1
    # The stream the client asked for: no usage chunk, no usage fields.
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == fake_upstream.reply
    assert all(c.usage is None and c.choices for c in chunks)

    sent = fake_upstream.requests
    assert [r.path for r in sent] == ["/v1/chat/completions"] * 2 + ["/v1/embeddings"]
    for request in sent:
        assert request.query == ""
        assert request.headers["authorization"] == "Bearer az-client-key"
        assert "api-key" not in request.headers
    assert sent[1].json()["stream_options"] == {"include_usage": True}

    records = sorted(await proxy.records(3), key=lambda r: r["id"])
    assert [r["endpoint"] for r in records] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
    ]
    assert [r["model"] for r in records] == ["gpt-4o-mini"] * 2 + ["text-embedding-3-small"]
    usage = fake_upstream.usage
    assert [r["total_tokens"] for r in records] == [usage.total_tokens] * 2 + [usage.prompt_tokens]
    assert {r["usage_source"] for r in records} == {"provider"}
    assert {r["upstream"] for r in records} == {fake_upstream.base_url}


@pytest.mark.parametrize("where", ["azure_endpoint", "base_url"])
async def test_azure_client_to_an_azure_upstream(
    proxy: RunningProxy, azure_upstream: FakeUpstream, where: str
) -> None:
    """To an Azure upstream the deployment is the route's, once, with the route's
    api-version and the client's api-key."""
    url = proxy.url if where == "azure_endpoint" else proxy.base_url
    async with azure_client(proxy, **{where: url}) as client:
        answer = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert answer.choices[0].message.content == azure_upstream.reply
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        chunks = [chunk async for chunk in stream]
        await client.embeddings.create(model="text-embedding-3-large", input="a")
    assert all(c.usage is None and c.choices for c in chunks)

    sent = azure_upstream.requests
    assert [r.path for r in sent] == [
        "/openai/deployments/prod-4o/chat/completions",
        "/openai/deployments/prod-4o/chat/completions",
        "/openai/deployments/text-embedding-3-large/embeddings",
    ]
    for request in sent:
        assert request.query == f"api-version={ROUTE_VERSION}"
        assert request.headers["api-key"] == "az-client-key"
        assert "authorization" not in request.headers

    records = sorted(await proxy.records(3), key=lambda r: r["id"])
    assert [r["endpoint"] for r in records] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
    ]
    assert [r["model"] for r in records] == ["gpt-4o", "gpt-4o", "text-embedding-3-large"]
    assert [r["prompt_tokens"] for r in records] == [40, 40, 40]
    assert {r["upstream"] for r in records} == {azure_upstream.url}


async def test_a_body_without_model_is_for_the_deployment(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """Azure reads the model from the URL; an OpenAI upstream needs it in the body."""
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        response = await client.post(
            "/openai/deployments/gpt-4o-mini/chat/completions",
            params={"api-version": CLIENT_VERSION},
            headers={"api-key": "az-client-key"},
            json={"messages": MESSAGES, "temperature": 0},
        )
    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1]
    assert sent.json() == {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0}
    (record,) = await proxy.records(1)
    assert (record["model"], record["endpoint"]) == ("gpt-4o-mini", "/v1/chat/completions")


async def test_an_unsafe_deployment_is_refused(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        response = await client.post(
            "/openai/deployments/a%3Fb/chat/completions",
            params={"api-version": CLIENT_VERSION},
            json={"messages": MESSAGES},
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "path"
    assert fake_upstream.requests == []
