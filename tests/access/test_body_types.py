"""The gate reads a body as the upstream does, whatever its ``Content-Type`` says.

The fake provider, like OpenAI, parses a JSON body whatever its declared type. A body sent
as ``text/plain`` used to pass with no model seen: past a key's model list, and past a
budget that then reserved nothing.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY, issue_key
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MODEL = "budget-test-model"
PRICES = [{"model": MODEL, "input": 100, "output": 1000}]
# 19 tokens in at $100/1M, 10 out at $1000/1M, as in test_budgets_e2e.
REQUEST_COST = Decimal("0.0119")


def chat(model: str, **extra: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


@pytest.fixture
async def priced_proxy(
    fake_upstream: FakeUpstream, database_url: str
) -> AsyncIterator[RunningProxy]:
    fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)
    settings = proxy_settings(
        fake_upstream.base_url,
        database_url,
        upstream__api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN,
        prices=PRICES,
    )
    async with start_proxy(settings) as running:
        running.api.headers.update(ADMIN)
        yield running


async def post(proxy: RunningProxy, key: str, body: bytes, content_type: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    return await proxy.api.post("/v1/chat/completions", content=body, headers=headers)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/octet-stream", "application/x-www-form-urlencoded"]
)
async def test_a_model_outside_the_key_list_is_refused_whatever_the_declared_type(
    priced_proxy: RunningProxy, fake_upstream: FakeUpstream, content_type: str
) -> None:
    key = (await issue_key(priced_proxy.api, models=["gpt-4o-mini"]))["key"]
    refused = await post(priced_proxy, key, chat("gpt-4o"), content_type)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert fake_upstream.requests == []
    allowed = await post(priced_proxy, key, chat("gpt-4o-mini"), content_type)
    assert allowed.status_code == 200, allowed.text
    [received] = fake_upstream.requests
    assert orjson.loads(received.body)["model"] == "gpt-4o-mini"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"model: gpt-4o", "text/plain"),  # not JSON: the model cannot be known
        (b'{"model": ["gpt-4o"], "messages": []}', "text/plain"),  # not a string
        # Valid JSON and a valid form, naming different models.
        (b'{"a":"&model=gpt-4o-mini&","model":"gpt-4o"}', "application/x-www-form-urlencoded"),
    ],
)
async def test_a_body_whose_model_cannot_be_known_is_a_400_for_a_key_with_a_model_list(
    priced_proxy: RunningProxy, fake_upstream: FakeUpstream, body: bytes, content_type: str
) -> None:
    limited = (await issue_key(priced_proxy.api, models=["gpt-4o-mini"]))["key"]
    refused = await post(priced_proxy, limited, body, content_type)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "model"
    assert fake_upstream.requests == []
    # A key without a model list and no budget: the proxy has nothing to judge, it passes.
    free = (await issue_key(priced_proxy.api))["key"]
    await post(priced_proxy, free, body, content_type)
    assert len(fake_upstream.requests) == 1


async def test_a_text_plain_burst_stays_within_a_small_budget(
    priced_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    issued = await issue_key(priced_proxy.api, name="burst")
    created = await priced_proxy.api.post(
        "/admin/budgets",
        json={"scope": "key", "subject": issued["id"], "period": "day", "usd": "0.05"},
    )
    assert created.status_code == 201, created.text
    body = chat(MODEL, max_tokens=10)
    answers = await asyncio.gather(
        *(post(priced_proxy, issued["key"], body, "text/plain") for _ in range(50))
    )
    statuses = [a.status_code for a in answers]
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert len(fake_upstream.requests) == admitted
    assert 3 <= admitted <= 5  # was 50 of 50 against $0.05 (12.5x)
    deadline = time.monotonic() + 10
    while True:
        [budget] = (await priced_proxy.api.get("/usage/budgets")).json()["data"]
        if Decimal(budget["spent_usd"]) == admitted * REQUEST_COST:
            break
        assert time.monotonic() < deadline, budget
        await asyncio.sleep(0.05)
    assert Decimal(budget["spent_usd"]) - Decimal("0.05") <= REQUEST_COST
    # With a budget on the key, an unreadable body is refused too (it would reserve nothing).
    refused = await post(priced_proxy, issued["key"], b"model: x", "text/plain")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"


async def test_an_upload_is_checked_by_its_model_form_field_through_the_sdk(
    priced_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    key = (await issue_key(priced_proxy.api, models=["whisper-1"]))["key"]
    audio = ("a.wav", io.BytesIO(b"RIFF\x00\x00\x00\x00WAVEfmt "), "audio/wav")
    async with openai.AsyncOpenAI(
        base_url=priced_proxy.base_url, api_key=key, max_retries=0
    ) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio)
        assert refused.value.code == "model_not_allowed"
        assert fake_upstream.requests == []
        # The fake has no transcription route (404), but the request got there.
        with pytest.raises(openai.NotFoundError):
            await sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    [received] = fake_upstream.requests
    assert received.path == "/v1/audio/transcriptions"
    assert received.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="model"\r\n\r\nwhisper-1\r\n' in received.body
