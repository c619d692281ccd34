from __future__ import annotations

import asyncio
import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.api.serialize import RECORD_FIELDS, SESSION_FIELDS
from proxy.records import RequestRecord
from proxy.store.engine import create_engine
from proxy.store.queries import UsageQueries
from proxy.store.writer import RecordWriter, write_records
from proxy.usage import Usage
from tests.store.factory import make_record
from tests.store.test_store_writer import wait_until


@pytest.fixture
async def stored(engine: AsyncEngine) -> list[RequestRecord]:
    records = [
        make_record(
            minutes=30 * i,
            session_id="s1" if i < 4 else "s2",
            user_id="alice" if i % 2 else "bob",
            model="gpt-4o" if i < 3 else "o3-mini",
            properties={"team": "search"} if i == 0 else {},
            cost_usd=None if i == 5 else Decimal("0.0000025"),
            usage=None if i == 5 else Usage(1000, 200, 1200, 100, 0, 50),
        )
        for i in range(6)
    ]
    await write_records(engine, records)
    return records


def assert_error(response: httpx.Response, status: int, param: str | None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None
    assert error["message"]


async def test_record_json(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    record = stored[0]
    response = await client.get(f"/usage/requests/{record.id}")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == list(RECORD_FIELDS)
    assert body["created_at"] == "2025-01-31T12:00:00Z"
    assert body["cost_usd"] == "0.0000025"
    assert body["properties"] == {"team": "search"}
    assert (body["prompt_tokens"], body["total_tokens"], body["reasoning_tokens"]) == (
        1000,
        1200,
        50,
    )
    assert (body["stream"], body["usage_source"], body["latency_ms"]) == (False, "provider", 123.5)
    unpriced = (await client.get(f"/usage/requests/{stored[5].id}")).json()
    assert unpriced["cost_usd"] is None and unpriced["total_tokens"] is None


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/usage/requests/" + "0" * 32), 404, "request_id")
    assert_error(await client.get("/usage/sessions/nope"), 404, "session_id")


async def test_list_requests(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    response = await client.get("/usage/requests")
    body = response.json()
    assert [r["id"] for r in body["data"]] == [r.id for r in reversed(stored)]
    assert body["next_cursor"] is None
    for query, expected in [
        ({"session_id": "s2"}, [5, 4]),
        ({"user_id": "alice"}, [5, 3, 1]),
        ({"model": "gpt-4o"}, [2, 1, 0]),
        ({"since": "2025-01-31T13:00:00Z", "until": "2025-01-31T14:00:00"}, [3, 2]),
        ({"since": "2025-01-31T14:00:00+01:00"}, [5, 4, 3, 2]),
        ({"until": "2025-01-31"}, []),
        ({"model": "gpt-4o", "user_id": "bob"}, [2, 0]),
    ]:
        data = (await client.get("/usage/requests", params=query)).json()["data"]
        assert [r["id"] for r in data] == [stored[i].id for i in expected], query


async def test_request_pagination(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        body = (await client.get("/usage/requests", params=params)).json()
        seen += [r["id"] for r in body["data"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == [r.id for r in reversed(stored)]


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("/usage/requests", {"limit": "0"}, "limit"),
        ("/usage/requests", {"limit": "1001"}, "limit"),
        ("/usage/requests", {"limit": "ten"}, "limit"),
        ("/usage/requests", {"since": "yesterday"}, "since"),
        ("/usage/requests", {"until": "2025-13-01"}, "until"),
        ("/usage/requests", {"cursor": "bogus"}, "cursor"),
        ("/usage/sessions", {"limit": "-1"}, "limit"),
        ("/usage/sessions", {"cursor": "bogus"}, "cursor"),
        ("/usage/sessions", {"since": "nope"}, "since"),
        ("/usage/summary", {}, "group_by"),
        ("/usage/summary", {"group_by": "week"}, "group_by"),
        ("/usage/summary", {"group_by": "property:"}, "group_by"),
        ("/usage/summary", {"group_by": "model", "until": "x"}, "until"),
    ],
)
async def test_bad_parameters_are_400_in_openai_shape(
    client: httpx.AsyncClient, path: str, query: dict[str, str], param: str
) -> None:
    assert_error(await client.get(path, params=query), 400, param)


async def test_any_session_id_an_app_sends_can_be_fetched(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # X-Session-Id is the app's own text: slashes, spaces, percent signs all occur.
    for session_id in ("team/alpha/run 7", "50% off", "trailing/"):
        await write_records(engine, [make_record(session_id=session_id)])
        quoted = httpx.URL("/usage/sessions/").join(quote(session_id, safe=""))
        body = (await client.get(quoted)).json()
        assert body["session_id"] == session_id
        assert body["requests"] == 1


async def test_sessions(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    body = (await client.get("/usage/sessions/s1")).json()
    assert list(body) == [*SESSION_FIELDS, "models", "error_rate", "tree"]
    assert body["requests"] == 4
    assert body["total_tokens"] == 4800
    assert body["cost_usd"] == "0.00001"
    assert body["unpriced_requests"] == 0
    assert body["user_id"] == "alice"
    assert body["first_request_at"] == "2025-01-31T12:00:00Z"
    assert body["last_request_at"] == "2025-01-31T13:30:00Z"
    assert body["models"] == {
        "gpt-4o": {"requests": 3, "total_tokens": 3600, "cost_usd": "0.0000075"},
        "o3-mini": {"requests": 1, "total_tokens": 1200, "cost_usd": "0.0000025"},
    }
    listed = (await client.get("/usage/sessions")).json()
    assert [s["session_id"] for s in listed["data"]] == ["s2", "s1"]
    assert listed["next_cursor"] is None
    assert listed["data"][0]["unpriced_requests"] == 1
    first = (await client.get("/usage/sessions", params={"limit": 1})).json()
    assert [s["session_id"] for s in first["data"]] == ["s2"]
    rest = (await client.get("/usage/sessions", params={"cursor": first["next_cursor"]})).json()
    assert [s["session_id"] for s in rest["data"]] == ["s1"]
    for query, expected in [
        ({"user_id": "bob"}, []),
        ({"user_id": "alice"}, ["s2", "s1"]),
        ({"since": "2025-01-31T13:45:00Z"}, ["s2"]),
        ({"until": "2025-01-31T13:45:00Z"}, ["s1"]),
    ]:
        data = (await client.get("/usage/sessions", params=query)).json()["data"]
        assert [s["session_id"] for s in data] == expected, query


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        ("model", [("gpt-4o", 3, "0.0000075"), ("o3-mini", 3, "0.000005")]),  # ties by key
        ("user", [("alice", 3, "0.000005"), ("bob", 3, "0.0000075")]),
        ("session", [("s1", 4, "0.00001"), ("s2", 2, "0.0000025")]),
        ("endpoint", [("/v1/chat/completions", 6, "0.0000125")]),
        ("day", [("2025-01-31", 6, "0.0000125")]),
        (
            "hour",
            [
                ("2025-01-31T12:00:00Z", 2, "0.000005"),
                ("2025-01-31T13:00:00Z", 2, "0.000005"),
                ("2025-01-31T14:00:00Z", 2, "0.0000025"),
            ],
        ),
        ("property:team", [(None, 5, "0.00001"), ("search", 1, "0.0000025")]),
    ],
)
async def test_summary(
    client: httpx.AsyncClient,
    stored: list[RequestRecord],
    group_by: str,
    expected: list[tuple[Any, ...]],
) -> None:
    response = await client.get("/usage/summary", params={"group_by": group_by})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["group_by"] == group_by
    rows = body["data"]
    assert [(r["key"], r["requests"], r["cost_usd"]) for r in rows] == expected
    for row in rows:
        assert {"prompt_tokens", "completion_tokens", "total_tokens"} <= set(row)


async def test_summary_filters(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    query = {"group_by": "model", "user_id": "alice", "since": "2025-01-31T12:15:00Z"}
    rows = (await client.get("/usage/summary", params=query)).json()["data"]
    assert [(r["key"], r["requests"], r["total_tokens"]) for r in rows] == [
        ("o3-mini", 2, 1200),
        ("gpt-4o", 1, 1200),
    ]
    query = {"group_by": "model", "session_id": "s2", "model": "o3-mini", "until": "2025-02-01"}
    rows = (await client.get("/usage/summary", params=query)).json()["data"]
    assert [(r["key"], r["unpriced_requests"]) for r in rows] == [("o3-mini", 1)]


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["database"] is True
    assert body["writer_healthy"] is True
    assert body["queue_depth"] == 0
    assert {"written_total", "failed_batches", "last_flush_at", "oldest_pending_age"} <= set(body)


async def test_readyz_when_database_is_down(app: FastAPI, client: httpx.AsyncClient) -> None:
    down = create_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    app.state.queries = UsageQueries(down)
    try:
        response = await client.get("/readyz")
    finally:
        await down.dispose()
    assert response.status_code == 503
    assert (response.json()["status"], response.json()["database"]) == ("unavailable", False)


async def test_readyz_when_writer_falls_behind(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="proxy.store.writer")
    unmigrated = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unmigrated.db'}")
    lagging: RecordWriter[RequestRecord] = RecordWriter(unmigrated, list, max_lag=0.05)
    await lagging.start()
    app.state.writer, writer = lagging, app.state.writer
    try:
        lagging.submit(make_record())
        await asyncio.sleep(0.1)
        response = await client.get("/readyz")
    finally:
        app.state.writer = writer
        await lagging.stop(timeout=0.1)
        await lagging.stop(timeout=0.1)  # a second stop is harmless
        await unmigrated.dispose()
    assert response.status_code == 503
    body = response.json()
    assert (body["database"], body["writer_healthy"], body["queue_depth"]) == (True, False, 1)
    assert body["oldest_pending_age"] >= 0.05


async def test_readyz_while_records_cannot_be_stored(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The database answers and the writer keeps up, but a new record would be lost: the
    queue is at its bound (a batch is being prepared, one more record waits)."""
    release = threading.Event()

    def slow_prepare(records: list[RequestRecord]) -> list[RequestRecord]:
        release.wait(10)
        return records

    full: RecordWriter[RequestRecord] = RecordWriter(engine, slow_prepare, queue_size=1)
    await full.start()
    app.state.writer, writer = full, app.state.writer
    try:
        assert (await client.get("/readyz")).status_code == 200
        assert full.submit(make_record())
        await wait_until(lambda: full.recordable)  # the writer took it from the queue
        assert full.submit(make_record())  # the queue's one place
        response = await client.get("/readyz")
    finally:
        app.state.writer = writer
        release.set()
        await full.stop(timeout=5)
    assert response.status_code == 503
    body = response.json()
    assert (body["database"], body["writer_healthy"], body["recordable"]) == (True, True, False)
