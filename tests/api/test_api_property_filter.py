"""``property=name:value`` on /usage/requests, /usage/sessions and /usage/summary."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.writer import write_records
from tests.store.factory import make_record


@pytest.fixture
async def stored(engine: AsyncEngine) -> list[RequestRecord]:
    records = [
        make_record(
            minutes=i,
            session_id=f"s{i % 2}",
            user_id="alice" if i < 2 else "bob",
            model="gpt-4o" if i else "o3-mini",
            properties={"env": "prod"} if i != 1 else {"env": "dev:eu"},
            cost_usd=Decimal("0.5"),
        )
        for i in range(4)
    ]
    await write_records(engine, records)
    return records


async def test_requests_by_property(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    response = await client.get("/usage/requests", params={"property": "Env:prod"})
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["data"]] == [stored[i].id for i in (3, 2, 0)]
    response = await client.get("/usage/requests", params={"property": "env:dev:eu"})
    assert [r["id"] for r in response.json()["data"]] == [stored[1].id]
    params = {"property": "env:prod", "user_id": "alice"}
    response = await client.get("/usage/requests", params=params)
    assert [r["id"] for r in response.json()["data"]] == [stored[0].id]


async def test_summary_by_property(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    params = {"group_by": "model", "property": "env:prod"}
    response = await client.get("/usage/summary", params=params)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [(r["key"], r["requests"], r["cost_usd"]) for r in data] == [
        ("gpt-4o", 2, "1"),
        ("o3-mini", 1, "0.5"),
    ]


async def test_sessions_by_property(client: httpx.AsyncClient, stored: list[RequestRecord]) -> None:
    response = await client.get("/usage/sessions", params={"property": "env:dev:eu"})
    assert response.status_code == 200, response.text
    assert [s["session_id"] for s in response.json()["data"]] == ["s1"]


@pytest.mark.parametrize("path", ["/usage/requests", "/usage/sessions", "/usage/summary"])
@pytest.mark.parametrize("value", ["env", ":prod", 'bad"name:x'])
async def test_invalid_property(
    client: httpx.AsyncClient, stored: list[RequestRecord], path: str, value: str
) -> None:
    response = await client.get(path, params={"group_by": "model", "property": value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "property"
    assert "name:value" in error["message"] or "property name" in error["message"]
