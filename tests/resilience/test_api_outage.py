"""Postgres stopped under a running proxy: every usage, dashboard-data and admin call answers
503 ``database_unavailable`` in OpenAI's error shape, each with one log line, no traceback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from sqlalchemy.engine import make_url

from tests.access.conftest import ADMIN, ADMIN_TOKEN
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres

SINCE = "2026-01-01T00:00:00Z"
CALLS: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/usage/requests", None),
    ("GET", "/usage/requests?session_id=outage&limit=1000", None),  # a session's requests
    ("GET", "/usage/requests/0123456789abcdef0123456789abcdef", None),
    ("GET", "/usage/sessions", None),
    ("GET", f"/usage/sessions?since={SINCE}&limit=20", None),  # the dashboard's recent sessions
    ("GET", "/usage/sessions/outage", None),
    ("GET", "/usage/summary?group_by=model", None),
    ("GET", f"/usage/summary?group_by=day&since={SINCE}", None),  # the dashboard's series
    ("GET", f"/usage/summary?group_by=user&since={SINCE}&limit=10", None),
    ("GET", "/usage/summary?group_by=property:env&property=env:prod", None),
    ("GET", "/usage/budgets", None),
    ("GET", "/usage/drift", None),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", {"name": "during-the-outage"}),
    ("DELETE", "/admin/keys/3f9c0a1be2d47c55", None),
    ("POST", "/admin/budgets", {"scope": "global", "period": "day", "usd": "1"}),
    ("DELETE", "/admin/budgets/9d2e61c0a4b3f871", None),
]


@pytest.fixture
async def proxy_on_postgres(
    fake_upstream: FakeUpstream, postgres_url: str, tmp_path: Path
) -> AsyncIterator[RunningProxy]:
    settings = proxy_settings(
        fake_upstream.base_url,
        postgres_url,
        admin_token=ADMIN_TOKEN,
        database__spool_dir=str(tmp_path / "spool"),
    )
    async with start_proxy(settings) as running:
        running.api.headers.update(ADMIN)
        yield running


async def test_every_api_call_answers_503_with_one_line_during_an_outage(
    restartable_postgres: PostgresServer,
    proxy_on_postgres: RunningProxy,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = proxy_on_postgres
    await proxy.sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Session-Id": "outage"},
    )
    await proxy.records(1)
    await asyncio.to_thread(restartable_postgres.stop)
    caplog.clear()
    caplog.set_level(logging.INFO)
    answers = {}
    for method, path, body in CALLS:
        response = await proxy.api.request(method, path, json=body)
        answers[f"{method} {path}"] = (response.status_code, response.json())
    prices = await proxy.api.get("/usage/prices", params={"model": "gpt-4o-mini"})
    # The proxied request is served as ever: its record is spooled.
    served = await proxy.sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    await asyncio.to_thread(restartable_postgres.start)

    for call, (status, body) in answers.items():
        assert status == 503, (call, body)
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == "database_unavailable", (call, body)
    assert prices.status_code == 200  # prices need no database
    assert served.choices
    # One line per call, naming the call and the database; no traceback anywhere.
    database = make_url(postgres_url).render_as_string(hide_password=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.api.unavailable"]
    assert sorted(line.split(":")[0] for line in lines) == sorted(
        f"{method} {path.partition('?')[0]}" for method, path, _ in CALLS
    )
    assert all(f"503, the database {database} is unavailable (" in line for line in lines), lines
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    # The writer's own line about spooling is the only error.
    errors = [r.name for r in caplog.records if r.levelno >= logging.ERROR]
    assert set(errors) <= {"proxy.store.writer"}, errors


async def test_the_sdk_sees_a_server_error_it_retries(
    restartable_postgres: PostgresServer, proxy_on_postgres: RunningProxy
) -> None:
    """What a client of the usage API sees: an InternalServerError with the code."""
    await asyncio.to_thread(restartable_postgres.stop)
    async with openai.AsyncOpenAI(
        base_url=proxy_on_postgres.url, api_key=ADMIN_TOKEN, max_retries=0
    ) as sdk:
        with pytest.raises(openai.InternalServerError) as raised:
            await sdk.get("/usage/requests", cast_to=object)
    assert raised.value.status_code == 503 and raised.value.code == "database_unavailable"
