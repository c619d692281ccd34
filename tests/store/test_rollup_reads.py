"""Summaries read from rollups answer exactly what raw rows answer.

The property test writes random records (in several batches, one replayed) and compares
``summary`` read both ways for random groupings, filters and ranges, on SQLite and Postgres.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.store.filters import UsageFilters
from proxy.store.queries import UsageQueries
from proxy.store.rollup_reads import Span, plan_summary, split_range
from proxy.store.rows import write_records
from proxy.store.tables import requests, rollups, sessions
from proxy.usage import Usage
from tests.store.factory import make_record

D0 = datetime(2025, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)


def at(hours: float) -> datetime:
    return D0 + timedelta(hours=hours)


@pytest.mark.parametrize(
    ("since", "until", "days", "spans"),
    [
        (None, None, True, [Span("day", None, None)]),
        (None, None, False, [Span("hour", None, None)]),
        (at(0), at(48), True, [Span("day", at(0), at(48))]),
        (
            at(1.5),
            at(50.25),
            True,
            [
                Span("raw", at(1.5), at(2)),
                Span("raw", at(50), at(50.25)),
                Span("hour", at(2), at(24)),
                Span("hour", at(48), at(50)),
                Span("day", at(24), at(48)),
            ],
        ),
        (at(1.5), at(20), True, [Span("raw", at(1.5), at(2)), Span("hour", at(2), at(20))]),
        (at(1.25), at(1.75), True, [Span("raw", at(1.25), at(1.75))]),
        (  # an edge nearer its hour's start or end: the hour's cells minus the rest
            at(1.25),
            at(49.75),
            True,
            [
                Span("raw", at(1), at(1.25), sign=-1),
                Span("raw", at(49.75), at(50), sign=-1),
                Span("hour", at(1), at(24)),
                Span("hour", at(48), at(50)),
                Span("day", at(24), at(48)),
            ],
        ),
        (
            at(23.1),
            None,
            False,
            [Span("raw", at(23), at(23.1), sign=-1), Span("hour", at(23), None)],
        ),
        (at(3), at(3), True, [Span("raw", at(3), at(3))]),
        (
            at(30.5),
            None,
            True,
            [
                Span("raw", at(30.5), at(31)),
                Span("hour", at(31), at(48)),
                Span("day", at(48), None),
            ],
        ),
        (
            None,
            at(30.5),
            True,
            [
                Span("raw", at(30), at(30.5)),
                Span("hour", at(24), at(30)),
                Span("day", None, at(24)),
            ],
        ),
    ],
)
def test_a_range_splits_into_raw_edges_whole_hours_and_whole_days(
    since: datetime | None, until: datetime | None, days: bool, spans: list[Span]
) -> None:
    assert split_range(since, until, days=days) == spans


@pytest.mark.parametrize(
    ("since", "until", "spans"),
    [
        (None, None, [Span("week", None, None)]),
        # D0 is a Saturday: weeks start at(48), at(216), at(384).
        (
            at(1.5),
            at(414.5),
            [
                Span("raw", at(1.5), at(2)),
                Span("raw", at(414), at(414.5)),
                Span("hour", at(2), at(24)),
                Span("hour", at(408), at(414)),
                Span("day", at(24), at(48)),
                Span("day", at(384), at(408)),
                Span("week", at(48), at(384)),
            ],
        ),
        (at(48), at(216), [Span("week", at(48), at(216))]),
        (at(24), at(200), [Span("hour", at(192), at(200)), Span("day", at(24), at(192))]),
        (at(72), None, [Span("day", at(72), at(216)), Span("week", at(216), None)]),
        (None, at(240), [Span("day", at(216), at(240)), Span("week", None, at(216))]),
    ],
)
def test_whole_weeks_within_the_whole_days_read_weekly_cells(
    since: datetime | None, until: datetime | None, spans: list[Span]
) -> None:
    assert split_range(since, until, days=True, weeks=True) == spans


def test_a_month_by_user_reads_weeks_and_by_day_never_does() -> None:
    filters = UsageFilters(property_name="env", property_value="prod", since=at(0), until=at(720))
    by_user = plan_summary("user", filters)
    assert by_user is not None and by_user.cube.name == "property_user"
    assert [s.source for s in by_user.spans].count("week") == 1
    by_day = plan_summary("day", dataclasses.replace(filters, user_id="ann"))
    assert by_day is not None and {s.source for s in by_day.spans} == {"day"}
    by_model = plan_summary("model", filters)  # property_model: hourly cells only
    assert by_model is not None and "week" not in {s.source for s in by_model.spans}


@pytest.mark.parametrize(
    ("group_by", "filters", "cube", "base"),
    [
        ("day", UsageFilters(), "total", None),
        ("hour", UsageFilters(user_id="u"), "user", None),
        ("model", UsageFilters(user_id="u"), "model_user", None),
        ("user", UsageFilters(property_name="env", property_value="prod"), "property_user", None),
        ("property:env", UsageFilters(), "property", "total"),
        ("property:env", UsageFilters(model="m"), "property_model", "model"),
        ("property:env", UsageFilters(property_name="ENV", property_value="x"), "property", None),
        ("model", UsageFilters(property_name="env", property_value="x"), "property_model", None),
        ("session", UsageFilters(), "session", None),
        ("day", UsageFilters(session_id="s"), "session", None),
        ("model", UsageFilters(session_id="s"), "session_model", None),
    ],
)
def test_the_plan_reads_the_smallest_cube_that_answers(
    group_by: str, filters: UsageFilters, cube: str, base: str | None
) -> None:
    plan = plan_summary(group_by, filters)
    assert plan is not None
    assert plan.cube.name == cube
    assert (plan.base.name if plan.base else None) == base


@pytest.mark.parametrize(
    ("group_by", "filters"),
    [
        ("hour", UsageFilters(session_id="s", model="m")),  # session by model: per day only
        ("endpoint", UsageFilters(key_id="k")),
        ("hour", UsageFilters(user_id="u", model="m")),  # model by user is kept per day only
        ("property:team", UsageFilters(property_name="env", property_value="prod")),
    ],
)
def test_what_no_cube_answers_is_left_to_raw_rows(group_by: str, filters: UsageFilters) -> None:
    assert plan_summary(group_by, filters) is None


def test_a_cube_kept_per_day_only_reads_records_for_the_partial_days() -> None:
    plan = plan_summary("model", UsageFilters(user_id="u", since=at(1.5), until=at(73)))
    assert plan is not None and plan.cube.name == "model_user"
    assert plan.spans == (
        Span("raw", at(1.5), at(24)),
        Span("raw", at(72), at(73)),
        Span("day", at(24), at(72)),
    )
    assert split_range(at(2), at(20), days=True, hours=False) == [Span("raw", at(2), at(20))]


def test_hourly_groups_never_read_daily_cells() -> None:
    plan = plan_summary("hour", UsageFilters(user_id="u", since=at(0), until=at(72)))
    assert plan is not None and {s.source for s in plan.spans} == {"hour"}


# Moments around hour and day edges, to the microsecond, and a Monday's (at(48), at(216)).
_MOMENTS = st.sampled_from([0, 0.5, 1, 1.2, 23.99, 24, 24.000001, 25.5, 47, 47.9, 48, 70.75,
                            215.5, 216, 216.25, 230])  # fmt: skip
_MOMENTS = _MOMENTS.map(at)
_OFFSET = st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(minutes=17)])

records_strategy = st.lists(
    st.builds(
        lambda created, offset, **fields: make_record(created_at=created + offset, **fields),
        created=_MOMENTS,
        offset=_OFFSET,
        model=st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", None, ""]),
        user_id=st.sampled_from(["ann", "bob", "Ann", None]),
        key_id=st.sampled_from([None, "k1", "k2"]),
        session_id=st.sampled_from([None, "s1", "s2", "s/3"]),
        endpoint=st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
        properties=st.dictionaries(
            st.sampled_from(["env", "team"]), st.sampled_from(["prod", "dev", "", "ünï"])
        ),
        cost_usd=st.one_of(
            st.none(), st.decimals(min_value=0, max_value=5, places=12, allow_nan=False)
        ),
        usage=st.one_of(
            st.none(),
            st.builds(
                Usage,
                st.integers(0, 10**6),
                st.integers(0, 10**5),
                st.integers(0, 10**6),
                st.integers(0, 100),
            ),
        ),
        status_code=st.sampled_from([200, 200, 429, 502]),
        error=st.sampled_from([None, None, "client disconnected"]),
        tool_calls=st.sampled_from([0, 0, 1, 3]),
    ),
    min_size=0,
    max_size=40,
)

_EDGES = st.one_of(st.none(), _MOMENTS, st.builds(lambda m, o: m + o, _MOMENTS, _OFFSET))

filters_strategy = st.builds(
    UsageFilters,
    session_id=st.sampled_from([None, None, None, "s1"]),
    user_id=st.sampled_from([None, None, "ann", "nobody"]),
    model=st.sampled_from([None, None, "gpt-4o", ""]),
    key_id=st.sampled_from([None, None, "k1"]),
    since=_EDGES,
    until=_EDGES,
    property_name=st.sampled_from([None, None, "env", "team"]),
    property_value=st.just("prod"),
).map(lambda f: f if f.property_name else dataclasses.replace(f, property_value=None))

GROUPS = st.sampled_from(["model", "user", "session", "endpoint", "day", "hour", "property:env",
                          "property:Team", "property:absent"])  # fmt: skip


async def _empty(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for table in (requests, sessions, rollups):
            await connection.execute(delete(table))


async def _write_in_batches(engine: AsyncEngine, records: list[RequestRecord]) -> None:
    third = max(1, len(records) // 3)
    for batch in (records[:third], records[third:], records[: third * 2]):  # one replayed
        await write_records(engine, batch)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    records=records_strategy,
    questions=st.lists(
        st.tuples(GROUPS, filters_strategy, st.sampled_from([1000, 1, 2])), min_size=6, max_size=6
    ),
)
async def test_rollups_answer_every_summary_as_raw_rows_do(
    engine: AsyncEngine, records: list[RequestRecord], questions: list[Any]
) -> None:
    await _assert_both_paths_answer_alike(engine, records, questions)


async def _assert_both_paths_answer_alike(
    engine: AsyncEngine, records: list[RequestRecord], questions: list[Any]
) -> None:
    """``records`` stored (a third replayed); each (group_by, filters, limit) question gets
    the same answer from rollups as from raw rows."""
    await _empty(engine)
    await _write_in_batches(engine, records)
    from_rollups, from_raw = UsageQueries(engine), UsageQueries(engine, use_rollups=False)
    for group_by, filters, limit in questions:
        expected = await from_raw.summary(group_by, filters, limit=limit)
        assert await from_rollups.summary(group_by, filters, limit=limit) == expected, (
            group_by,
            filters,
            limit,
        )


# The questions the weekly cells answer: by user, or for one user, with no other dimension.
_BY_USER_FILTERS = st.builds(
    UsageFilters,
    user_id=st.sampled_from([None, None, "ann"]),
    since=_EDGES,
    until=_EDGES,
    property_name=st.sampled_from([None, "env"]),
    property_value=st.just("prod"),
).map(lambda f: f if f.property_name else dataclasses.replace(f, property_value=None))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    records=records_strategy,
    questions=st.lists(
        st.tuples(
            st.sampled_from(["user", "property:env", "property:team"]),
            _BY_USER_FILTERS,
            st.just(1000),
        ),
        min_size=6,
        max_size=6,
    ),
)
async def test_weekly_cells_answer_as_raw_rows_do(
    engine: AsyncEngine, records: list[RequestRecord], questions: list[Any]
) -> None:
    await _assert_both_paths_answer_alike(engine, records, questions)


async def test_summaries_do_read_the_rollups(engine: AsyncEngine) -> None:
    """The comparison above would pass if both paths read raw rows: this one would not."""
    await write_records(engine, [make_record(minutes=n, cost_usd=Decimal("0.5")) for n in range(3)])
    queries = UsageQueries(engine)
    (before,) = await queries.summary("model")
    assert (before["requests"], before["cost_usd"]) == (3, Decimal("1.5"))
    async with engine.begin() as connection:
        await connection.execute(
            update(rollups).where(rollups.c.cube == "model").values(requests=rollups.c.requests + 1)
        )
    (after,) = await queries.summary("model")
    assert after["requests"] == 4
    (raw,) = await UsageQueries(engine, use_rollups=False).summary("model")
    assert raw["requests"] == 3


async def test_until_rollups_are_complete_summaries_read_raw_rows(engine: AsyncEngine) -> None:
    from proxy.store.tables import rollup_state

    await write_records(engine, [make_record()])
    async with engine.begin() as connection:
        await connection.execute(delete(rollups))
        await connection.execute(update(rollup_state).values(complete=False))
    (row,) = await UsageQueries(engine).summary("model")
    assert row["requests"] == 1


async def test_a_summary_from_rollups_runs_serially_and_leaves_the_connection_as_it_was(
    postgres_engine: AsyncEngine,
) -> None:
    """Parallel workers cost more than a few thousand cells take to sum; the setting is the
    read's own (``SET LOCAL``), not the pooled connection's."""
    await write_records(postgres_engine, [make_record(minutes=n) for n in range(3)])
    async with postgres_engine.connect() as connection:
        default = await connection.scalar(text("SHOW max_parallel_workers_per_gather"))
    queries = UsageQueries(postgres_engine)
    (row,) = await queries.summary("user")
    assert row["requests"] == 3
    async with postgres_engine.connect() as connection:
        assert await connection.scalar(text("SHOW max_parallel_workers_per_gather")) == default
