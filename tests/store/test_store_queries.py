from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.engine import create_engine
from proxy.store.queries import InvalidQuery, UsageFilters, UsageQueries
from proxy.store.tables import TOKEN_FIELDS
from proxy.store.writer import write_records
from proxy.usage import Usage
from tests.store.factory import T0, make_record
from tests.support.servers import free_port


async def test_record_round_trip(engine: AsyncEngine, queries: UsageQueries) -> None:
    usage = Usage(100, 20, 120, 30, 5, 7, 1, 2)
    cet = timezone(timedelta(hours=1))
    record = make_record(
        created_at=datetime(2025, 1, 31, 13, 30, 0, 123456, tzinfo=cet),
        usage=usage,
        properties={"team": "search", "env": "prod"},
        cost_usd=Decimal("123456.78901234567851"),  # rounded to 12 places
        stream=True,
        ttft_ms=12.25,
        error="upstream closed",
    )
    await write_records(engine, [record])
    row = await queries.get_request(record.id)
    assert row is not None
    assert row["created_at"] == datetime(2025, 1, 31, 12, 30, 0, 123456, tzinfo=UTC)
    assert row["created_at"].tzinfo is UTC
    assert row["properties"] == {"team": "search", "env": "prod"}
    assert row["cost_usd"] == Decimal("123456.789012345679")
    assert isinstance(row["cost_usd"], Decimal)
    tokens = [row[f] for f in TOKEN_FIELDS]
    assert tokens == [100, 20, 120, 30, 5, 7, 1, 2]
    assert (row["prompt_audio_tokens"], row["completion_audio_tokens"]) == (1, 2)
    assert (row["stream"], row["ttft_ms"], row["error"]) == (True, 12.25, "upstream closed")


async def test_unknown_usage_and_cost_stay_null(engine: AsyncEngine, queries: UsageQueries) -> None:
    record = make_record(usage=None, usage_source=None, cost_usd=None, session_id=None)
    await write_records(engine, [record])
    row = await queries.get_request(record.id)
    assert row is not None
    assert row["total_tokens"] is None and row["prompt_tokens"] is None
    assert row["cost_usd"] is None
    assert await queries.get_request("f" * 32) is None


@pytest.fixture
async def varied(engine: AsyncEngine) -> list[RequestRecord]:
    """Records over two days, two users, three sessions, two models, properties."""
    records = [
        make_record(
            minutes=90 * i,  # 0h, 1.5h, ... 22.5h: across two UTC days
            session_id=f"s{i % 3}",
            user_id="alice" if i % 2 else "bob",
            model="gpt-4o" if i < 6 else "claude-3-5-sonnet",
            endpoint="/v1/embeddings" if i == 15 else "/v1/chat/completions",
            properties={"team": "search"} if i % 4 == 0 else {},
            cost_usd=None if i == 7 else Decimal("0.001"),
        )
        for i in range(16)
    ]
    await write_records(engine, records)
    return records


def ids(rows: list[dict[str, object]]) -> list[object]:
    return [r["id"] for r in rows]


async def test_list_requests_filters(varied: list[RequestRecord], queries: UsageQueries) -> None:
    newest_first = sorted(varied, key=lambda r: r.id, reverse=True)

    async def listed(**filters: object) -> list[object]:
        rows, cursor = await queries.list_requests(**filters)  # type: ignore[arg-type]
        assert cursor is None
        return ids(rows)

    assert await listed() == [r.id for r in newest_first]
    assert await listed(session_id="s1") == [r.id for r in newest_first if r.session_id == "s1"]
    assert await listed(user_id="alice") == [r.id for r in newest_first if r.user_id == "alice"]
    assert await listed(model="gpt-4o") == [r.id for r in newest_first if r.model == "gpt-4o"]
    since, until = varied[3].created_at, varied[6].created_at
    assert await listed(since=since, until=until) == [r.id for r in newest_first[-6:-3]]
    assert await listed(since=since.astimezone(timezone(timedelta(hours=-5)))) == [
        r.id for r in newest_first[:-3]
    ]
    assert await listed(user_id="alice", model="claude-3-5-sonnet", session_id="s0") == [
        r.id
        for r in newest_first
        if (r.user_id, r.model, r.session_id) == ("alice", "claude-3-5-sonnet", "s0")
    ]
    assert await listed(user_id="nobody") == []


async def test_cursor_pagination_has_no_gaps_or_duplicates(
    engine: AsyncEngine, queries: UsageQueries
) -> None:
    records = [make_record(minutes=i // 3) for i in range(47)]  # several per millisecond
    await write_records(engine, records)
    seen: list[object] = []
    cursor = None
    pages = 0
    while True:
        rows, cursor = await queries.list_requests(limit=10, cursor=cursor)
        seen += ids(rows)
        pages += 1
        if cursor is None:
            break
    assert pages == 5
    assert seen == sorted((r.id for r in records), reverse=True)
    rows, cursor = await queries.list_requests(limit=47)
    assert len(rows) == 47 and cursor is None


@pytest.mark.parametrize("cursor", ["not base64!", "Zm9v", "", "%%%"])
async def test_invalid_request_cursor(queries: UsageQueries, cursor: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        await queries.list_requests(cursor=cursor)
    assert caught.value.param == "cursor"


async def test_get_session_with_models(varied: list[RequestRecord], queries: UsageQueries) -> None:
    session = await queries.get_session("s1")
    assert session is not None
    mine = [r for r in varied if r.session_id == "s1"]
    assert session["requests"] == len(mine) == 5
    assert session["models"] == {
        "gpt-4o": {"requests": 2, "total_tokens": 30, "cost_usd": Decimal("0.002")},
        "claude-3-5-sonnet": {"requests": 3, "total_tokens": 45, "cost_usd": Decimal("0.002")},
    }
    assert session["cost_usd"] == Decimal("0.004")
    assert session["unpriced_requests"] == 1
    assert session["first_request_at"] == mine[0].created_at
    assert session["last_request_at"] == mine[-1].created_at
    assert await queries.get_session("nope") is None


async def test_a_listed_sessions_models_hold_all_its_requests_across_days(
    varied: list[RequestRecord], queries: UsageQueries
) -> None:
    """The breakdown searches the sessions' own span: each session's first to last record,
    whichever page it is on and however many days it covers."""
    for limit in (1, 2, 3):
        rows, _ = await queries.list_sessions(limit=limit)
        for row in rows:
            mine = [r for r in varied if r.session_id == row["session_id"]]
            assert mine[0].created_at.date() != mine[-1].created_at.date()
            assert sum(m["requests"] for m in row["models"].values()) == len(mine)


async def test_list_sessions(varied: list[RequestRecord], queries: UsageQueries) -> None:
    rows, cursor = await queries.list_sessions()
    assert cursor is None
    # s0 has the last request (i=15), then s2 (i=14), then s1 (i=13)
    assert [r["session_id"] for r in rows] == ["s0", "s2", "s1"]
    assert all("models" in r for r in rows)
    rows, _ = await queries.list_sessions(user_id="bob")
    assert [r["session_id"] for r in rows] == ["s2"]  # the user last seen in each session
    rows, _ = await queries.list_sessions(until=varied[1].created_at)
    assert [r["session_id"] for r in rows] == ["s0"]  # only s0 had started
    rows, _ = await queries.list_sessions(since=varied[15].created_at)
    assert [r["session_id"] for r in rows] == ["s0"]  # only s0 still active


async def test_session_pagination(engine: AsyncEngine, queries: UsageQueries) -> None:
    # Pairs of sessions share a last_request_at: the cursor must break ties by id.
    records = [make_record(minutes=i // 2, session_id=f"sess-{i:02d}") for i in range(23)]
    await write_records(engine, records)
    seen: list[object] = []
    cursor = None
    while True:
        rows, cursor = await queries.list_sessions(limit=4, cursor=cursor)
        seen += [r["session_id"] for r in rows]
        if cursor is None:
            break
    expected = sorted(records, key=lambda r: (r.created_at, r.session_id or ""), reverse=True)
    assert seen == [r.session_id for r in expected]
    with pytest.raises(InvalidQuery):
        await queries.list_sessions(cursor="Zm9v")


def keyed(rows: list[dict[str, object]]) -> dict[object, tuple[object, ...]]:
    return {r["key"]: (r["requests"], r["total_tokens"], r["cost_usd"]) for r in rows}


async def test_summary_by_columns(varied: list[RequestRecord], queries: UsageQueries) -> None:
    assert keyed(await queries.summary("model")) == {
        "claude-3-5-sonnet": (10, 150, Decimal("0.009")),
        "gpt-4o": (6, 90, Decimal("0.006")),
    }
    assert keyed(await queries.summary("user")) == {
        "alice": (8, 120, Decimal("0.007")),
        "bob": (8, 120, Decimal("0.008")),
    }
    assert keyed(await queries.summary("session")) == {
        "s0": (6, 90, Decimal("0.006")),
        "s1": (5, 75, Decimal("0.004")),
        "s2": (5, 75, Decimal("0.005")),
    }
    endpoint = await queries.summary("endpoint")
    assert [r["key"] for r in endpoint] == ["/v1/chat/completions", "/v1/embeddings"]
    row = endpoint[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (150, 75, 30)
    assert (row["unpriced_requests"], row["reasoning_tokens"]) == (1, 0)


async def test_summary_by_time(varied: list[RequestRecord], queries: UsageQueries) -> None:
    assert keyed(await queries.summary("day")) == {
        "2025-01-31": (8, 120, Decimal("0.007")),  # 12:00 .. 22:30 UTC
        "2025-02-01": (8, 120, Decimal("0.008")),
    }
    hours = await queries.summary("hour", UsageFilters(until=T0 + timedelta(hours=5)))
    # records at 12:00, 13:30, 15:00, 16:30 before 17:00
    assert [(r["key"], r["requests"]) for r in hours] == [
        ("2025-01-31T12:00:00Z", 1),
        ("2025-01-31T13:00:00Z", 1),
        ("2025-01-31T15:00:00Z", 1),
        ("2025-01-31T16:00:00Z", 1),
    ]


async def test_summary_by_property(varied: list[RequestRecord], queries: UsageQueries) -> None:
    rows = await queries.summary("property:Team")
    assert keyed(rows) == {"search": (4, 60, Decimal("0.004")), None: (12, 180, Decimal("0.011"))}
    assert [r["key"] for r in rows] == [None, "search"]  # biggest group first


async def test_summary_filters(varied: list[RequestRecord], queries: UsageQueries) -> None:
    filters = UsageFilters(session_id="s1", user_id="alice", model="claude-3-5-sonnet")
    expected = [
        r
        for r in varied
        if (r.session_id, r.user_id, r.model) == ("s1", "alice", "claude-3-5-sonnet")
    ]
    priced = [r.cost_usd for r in expected if r.cost_usd is not None]
    assert len(expected) == 2 and len(priced) == 1
    assert keyed(await queries.summary("model", filters)) == {
        "claude-3-5-sonnet": (2, 30, sum(priced))
    }
    assert await queries.summary("model", UsageFilters(since=T0 + timedelta(days=9))) == []


@pytest.mark.parametrize("group_by", ["modell", "property:", 'property:a"b', "day;drop", ""])
async def test_invalid_group_by(queries: UsageQueries, group_by: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        await queries.summary(group_by)
    assert caught.value.param == "group_by"


async def test_exact_money_sums(engine: AsyncEngine, queries: UsageQueries) -> None:
    costs = [Decimal("0.0000025"), Decimal("0.000000000001"), Decimal("0.1")] * 400
    await write_records(engine, [make_record(minutes=i, cost_usd=c) for i, c in enumerate(costs)])
    [row] = await queries.summary("model")
    assert row["cost_usd"] == sum(costs) == Decimal("40.001000000400")
    session = await queries.get_session("s1")
    assert session is not None
    assert session["cost_usd"] == sum(costs)


async def test_large_amounts_are_exact(engine: AsyncEngine, queries: UsageQueries) -> None:
    big = (
        Decimal("9000000.123456789012")
        if "sqlite" in str(engine.url)
        else Decimal("123456789012345678.123456789012")
    )
    await write_records(engine, [make_record(cost_usd=big)])
    [row] = await queries.summary("model")
    assert row["cost_usd"] == big


async def test_ping(queries: UsageQueries) -> None:
    assert await queries.ping() is True
    down = create_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    try:
        assert await UsageQueries(down).ping() is False
    finally:
        await down.dispose()


async def test_a_database_that_stays_away_is_one_warning_not_one_per_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on the port: every ping fails at once, as during an outage.
    engine = create_engine(f"postgresql+asyncpg://tally:secret@127.0.0.1:{free_port()}/none")
    queries = UsageQueries(engine)
    try:
        with caplog.at_level(logging.DEBUG, logger="proxy.store.queries"):
            assert [await queries.ping() for _ in range(5)] == [False] * 5
    finally:
        await engine.dispose()
    failures = [r for r in caplog.records if "database ping failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING] + [logging.DEBUG] * 4
