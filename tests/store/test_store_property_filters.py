"""Filtering by a property value (``UsageFilters.property_name``/``property_value``)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.queries import InvalidQuery, UsageFilters, UsageQueries
from proxy.store.writer import write_records
from tests.store.factory import make_record


@pytest.fixture
async def tagged(engine: AsyncEngine) -> list[RequestRecord]:
    """Six records: env prod/dev/none, a value with a colon and quotes, two sessions."""
    properties: list[dict[str, str]] = [
        {"env": "prod", "team": "search"},
        {"env": "dev"},
        {},
        {"env": "prod"},
        {"env": "a:b \"quoted\" 'x'"},
        {"team": "prod"},
    ]
    records = [
        make_record(
            minutes=10 * i,
            session_id="s-prod" if i in (0, 3) else "s-other",
            user_id="alice" if i < 3 else "bob",
            properties=props,
            cost_usd=Decimal("0.25"),
        )
        for i, props in enumerate(properties)
    ]
    await write_records(engine, records)
    return records


def ids(rows: list[dict[str, object]]) -> set[object]:
    return {row["id"] for row in rows}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("env", "prod", {0, 3}),
        ("ENV", "prod", {0, 3}),  # names are stored lower-cased
        ("env", "dev", {1}),
        ("env", "Prod", set()),  # values are exact
        ("env", "a:b \"quoted\" 'x'", {4}),
        ("team", "prod", {5}),
        ("missing", "prod", set()),
        ("env", "", set()),
    ],
)
async def test_list_requests_by_property(
    tagged: list[RequestRecord], queries: UsageQueries, name: str, value: str, expected: set[int]
) -> None:
    rows, _ = await queries.list_requests(property_name=name, property_value=value)
    assert ids(rows) == {tagged[i].id for i in expected}


async def test_property_combines_with_other_filters(
    tagged: list[RequestRecord], queries: UsageQueries
) -> None:
    rows, _ = await queries.list_requests(user_id="bob", property_name="env", property_value="prod")
    assert ids(rows) == {tagged[3].id}


async def test_summary_by_property(tagged: list[RequestRecord], queries: UsageQueries) -> None:
    filters = UsageFilters(property_name="env", property_value="prod")
    rows = await queries.summary("user", filters)
    assert [(r["key"], r["requests"], r["cost_usd"]) for r in rows] == [
        ("alice", 1, Decimal("0.25")),
        ("bob", 1, Decimal("0.25")),
    ]
    by_day = await queries.summary("day", filters)
    assert [(r["key"], r["requests"], r["total_tokens"]) for r in by_day] == [("2025-01-31", 2, 30)]


async def test_sessions_by_property(tagged: list[RequestRecord], queries: UsageQueries) -> None:
    rows, _ = await queries.list_sessions(property_name="env", property_value="prod")
    assert [r["session_id"] for r in rows] == ["s-prod"]
    # The session's totals stay whole: the filter picks sessions, not their requests.
    assert rows[0]["requests"] == 2
    rows, _ = await queries.list_sessions(property_name="env", property_value="dev")
    assert [r["session_id"] for r in rows] == ["s-other"]
    rows, _ = await queries.list_sessions(property_name="env", property_value="nope")
    assert rows == []


async def test_invalid_property_filter(queries: UsageQueries) -> None:
    with pytest.raises(InvalidQuery) as caught:
        await queries.list_requests(property_name='bad"name', property_value="x")
    assert caught.value.param == "property"
    with pytest.raises(InvalidQuery) as caught:
        await queries.summary("model", UsageFilters(property_name="env"))
    assert caught.value.param == "property"
