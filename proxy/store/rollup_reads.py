"""Usage summaries answered from rollups: which cube and grains can answer, and the SQL.

A summary over ``[since, until)`` splits into whole weeks and days (read from weekly and
daily cells when the cube keeps them), whole hours (hourly cells) and the partial hours at
the edges (raw rows, or an hour's cells minus the raw rows outside the range, so the answer
is exact to the microsecond). All pieces go into one statement, so they are read from one
snapshot, and are summed by group in SQL, ordered and cut exactly as the raw-row
summary is: the answers are the same, only cheaper.

A summary that no cube can answer (a session filter with another dimension, two different
properties) gets ``None`` from ``plan_summary`` and is answered from raw rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Text,
    case,
    cast,
    func,
    literal,
    null,
    select,
    type_coerce,
    union_all,
)

from proxy.store.cubes import PROPERTY, Cube, bucket_start, smallest_cube
from proxy.store.filters import (
    UsageFilters,
    failed,
    property_text,
    request_conditions,
    time_bucket,
)
from proxy.store.tables import requests, rollups
from proxy.store.types import Money

SUMMARY_TOKENS: Final = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
                         "reasoning_tokens")  # fmt: skip
"""The token sums a summary row reports."""

SUMMARY_STEPS: Final = ("tool_calls", "errors")
"""The agent-step sums a summary row reports beside them: tool calls asked for, failures."""

_GROUP_DIMENSIONS: Final = {
    "model": "model",
    "user": "user_id",
    "session": "session_id",
    "endpoint": "endpoint",
}
_FILTER_DIMENSIONS: Final = (
    ("session_id", "session_id"),
    ("user_id", "user_id"),
    ("model", "model"),
    ("key_id", "key_id"),
)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Span:
    """A piece of a time range and what answers it: raw rows, hourly, daily or weekly
    cells; raw rows with ``sign=-1`` are taken out (of the hour cell that covers them)."""

    source: Literal["raw", "hour", "day", "week"]
    start: datetime | None
    end: datetime | None
    sign: int = 1


@dataclass(frozen=True, slots=True)
class SummaryPlan:
    """How a summary is read: ``cube`` over ``spans``; for a ``property:<name>`` group without
    a property filter, the requests without that property come from ``base`` (the same cube
    without properties) minus the cells that have it."""

    group_by: str
    cube: Cube
    spans: tuple[Span, ...]
    base: Cube | None


def plan_summary(group_by: str, filters: UsageFilters) -> SummaryPlan | None:
    """The cube and pieces answering this summary, or None when raw rows must."""
    needed, properties = _needed(group_by, filters)
    if len(properties) > 1:
        return None
    cube = smallest_cube(needed)
    if cube is None:
        return None
    base = None
    if group_by.startswith("property:") and filters.property_name is None:
        base = smallest_cube(needed - {PROPERTY})
        if base is None or base.grains != cube.grains:
            return None
    hours = "hour" in cube.grains
    days = "day" in cube.grains and group_by != "hour"
    weeks = days and "week" in cube.grains and group_by != "day"
    if not (hours or days):
        return None  # hourly groups from a cube kept per day only
    spans = split_range(filters.since, filters.until, days=days, hours=hours, weeks=weeks)
    return SummaryPlan(group_by, cube, tuple(spans), base)


def _needed(group_by: str, filters: UsageFilters) -> tuple[set[str], set[str]]:
    """The dimensions a summary needs, and the property names it involves."""
    needed: set[str] = set()
    properties: set[str] = set()
    if group_by in _GROUP_DIMENSIONS:
        needed.add(_GROUP_DIMENSIONS[group_by])
    elif group_by.startswith("property:"):
        needed.add(PROPERTY)
        properties.add(group_by.removeprefix("property:").lower())
    for field, dimension in _FILTER_DIMENSIONS:
        if getattr(filters, field) is not None:
            needed.add(dimension)
    if filters.property_name is not None:
        needed.add(PROPERTY)
        properties.add(filters.property_name.lower())
    return needed, properties


def split_range(
    since: datetime | None,
    until: datetime | None,
    *,
    days: bool,
    hours: bool = True,
    weeks: bool = False,
) -> list[Span]:
    """``[since, until)`` as raw partial hours (or, without ``hours``, partial days) at the
    edges, whole hours and, with ``days``, whole days (and, with ``weeks``, whole weeks from
    Monday within them); an open end stays open (the newest cells are as complete as the
    rows).

    A partial hour's records are read whichever way is fewer: the records inside the range,
    or its whole hour's cells minus the records of the hour outside the range (since 14:10:
    the 14:00 cell minus 14:00 to 14:10). So an edge reads at most half an hour of records.
    """
    if not hours:
        return _whole_days_and_raw_edges(since, until)
    first_hour = None if since is None else _ceil_hour(since)
    last_hour = None if until is None else _floor_hour(until)
    if first_hour is not None and last_hour is not None and first_hour >= last_hour:
        return [Span("raw", since, until)]
    spans: list[Span] = []
    if since is not None and first_hour is not None and since < first_hour:
        hour_start = first_hour - _HOUR
        if since - hour_start < first_hour - since:
            spans.append(Span("raw", hour_start, since, sign=-1))
            first_hour = hour_start
        else:
            spans.append(Span("raw", since, first_hour))
    if until is not None and last_hour is not None and last_hour < until:
        hour_end = last_hour + _HOUR
        if hour_end - until < until - last_hour:
            spans.append(Span("raw", until, hour_end, sign=-1))
            last_hour = hour_end
        else:
            spans.append(Span("raw", last_hour, until))
    if not days:
        return [*spans, Span("hour", first_hour, last_hour)]
    first_day = None if first_hour is None else _ceil_day(first_hour)
    last_day = None if last_hour is None else _floor_day(last_hour)
    if first_day is not None and last_day is not None and first_day >= last_day:
        return [*spans, Span("hour", first_hour, last_hour)]
    if first_hour is not None and first_day is not None and first_hour < first_day:
        spans.append(Span("hour", first_hour, first_day))
    if last_hour is not None and last_day is not None and last_day < last_hour:
        spans.append(Span("hour", last_day, last_hour))
    if not weeks:
        return [*spans, Span("day", first_day, last_day)]
    return [*spans, *_whole_weeks(first_day, last_day)]


def _whole_weeks(first_day: datetime | None, last_day: datetime | None) -> list[Span]:
    """Whole days ``[first_day, last_day)`` as the whole weeks within and the days left at
    either edge."""
    return _whole_units(first_day, last_day, "week", "day", _floor_week, _ceil_week)


def _whole_days_and_raw_edges(since: datetime | None, until: datetime | None) -> list[Span]:
    return _whole_units(since, until, "day", "raw", _floor_day, _ceil_day)


def _whole_units(
    start: datetime | None,
    end: datetime | None,
    whole: Literal["day", "week"],
    edge: Literal["raw", "day"],
    floor: Callable[[datetime], datetime],
    ceil: Callable[[datetime], datetime],
) -> list[Span]:
    """``[start, end)`` as the ``whole`` units within (``floor``/``ceil`` find their
    bounds) and ``edge`` spans for what is left at either end; an open end stays open."""
    first = None if start is None else ceil(start)
    last = None if end is None else floor(end)
    if first is not None and last is not None and first >= last:
        return [Span(edge, start, end)]
    spans: list[Span] = []
    if start is not None and first is not None and start < first:
        spans.append(Span(edge, start, first))
    if end is not None and last is not None and last < end:
        spans.append(Span(edge, last, end))
    return [*spans, Span(whole, first, last)]


def summary_query(plan: SummaryPlan, filters: UsageFilters, dialect: str, limit: int) -> Any:
    """The statement answering ``plan``: rows of key, requests, token sums, cost, unpriced,
    tool calls and errors."""
    pieces: list[Select[Any]] = []
    for span in plan.spans:
        if span.source == "raw":
            pieces.append(_raw_piece(plan.group_by, filters, span, dialect, span.sign < 0))
            continue
        pieces.append(_cell_piece(plan, plan.cube, filters, span, dialect))
        if plan.base is not None:
            pieces.append(_cell_piece(plan, plan.base, filters, span, dialect, key_null=True))
            pieces.append(_cell_piece(plan, plan.cube, filters, span, dialect, negate=True))
    every = (pieces[0] if len(pieces) == 1 else union_all(*pieces)).subquery()

    def total(name: str) -> ColumnElement[Any]:
        # SUM of BIGINT is NUMERIC on Postgres: back to an integer, as raw-row sums come.
        return cast(func.coalesce(func.sum(every.c[name]), 0), BigInteger)

    requests_sum, unpriced = total("requests"), total("unpriced_requests")
    query = (
        select(
            every.c.key,
            requests_sum.label("requests"),
            *(total(name).label(name) for name in SUMMARY_TOKENS),
            type_coerce(case((requests_sum > unpriced, func.sum(every.c.cost_usd))), Money()).label(
                "cost_usd"
            ),
            unpriced.label("unpriced_requests"),
            *(total(name).label(name) for name in SUMMARY_STEPS),
        )
        .group_by(every.c.key)
        .having(requests_sum > 0)
    )
    if plan.group_by in ("day", "hour"):
        query = query.order_by(every.c.key)
    else:
        query = query.order_by(requests_sum.desc(), every.c.key.asc().nulls_last())
    return query.limit(limit)


def session_model_query(session_ids: Sequence[str], first: datetime, last: datetime) -> Any:
    """Rows of session id, model, requests, total tokens and cost (null when none of the
    requests was priced, as a raw-row sum is) of ``session_ids``, whose requests lie in
    ``[first, last]``, from the daily ``session_model`` cells."""
    cells = rollups.c
    requests_sum = cast(func.sum(cells.requests), BigInteger)
    priced = requests_sum > cast(func.sum(cells.unpriced_requests), BigInteger)
    return (
        select(
            cells.session_id,
            cells.model,
            requests_sum.label("requests"),
            cast(func.sum(cells.total_tokens), BigInteger).label("total_tokens"),
            type_coerce(case((priced, func.sum(cells.cost_usd))), Money()).label("cost_usd"),
        )
        .where(
            cells.cube == "session_model",
            cells.grain == "day",
            cells.session_id.in_(list(session_ids)),
            cells.bucket_start.between(_floor_day(first), last),
        )
        .group_by(cells.session_id, cells.model)
        .having(requests_sum > 0)
    )


def _raw_piece(
    group_by: str, filters: UsageFilters, span: Span, dialect: str, negate: bool = False
) -> Select[Any]:
    """The raw rows of a partial hour, one by one (``negate``: their measures negated): few,
    and grouped with the cells outside (grouping here would render ``properties ->> $n``
    twice, which Postgres refuses)."""
    columns = requests.c
    # The span bounds the time; a span taken out lies outside the filters' range.
    conditions = request_conditions(dataclasses.replace(filters, since=None, until=None))
    if span.start is not None:
        conditions.append(columns.created_at >= span.start)
    if span.end is not None:
        conditions.append(columns.created_at < span.end)
    one = -1 if negate else 1
    return select(
        _raw_key(group_by, dialect).label("key"),
        literal(one, BigInteger).label("requests"),
        *((-columns[name] if negate else columns[name]).label(name) for name in SUMMARY_TOKENS),
        (-columns.cost_usd if negate else columns.cost_usd).label("cost_usd"),
        case((columns.cost_usd.is_(None), one), else_=0).label("unpriced_requests"),
        (-columns.tool_calls if negate else columns.tool_calls).label("tool_calls"),
        case((failed(), one), else_=0).label("errors"),
    ).where(*conditions)


def _raw_key(group_by: str, dialect: str) -> ColumnElement[Any]:
    if group_by in ("day", "hour"):
        return time_bucket(dialect, group_by)
    if group_by.startswith("property:"):
        return property_text(group_by.removeprefix("property:"), "group_by")
    column: ColumnElement[Any] = requests.c[_GROUP_DIMENSIONS[group_by]]
    return column


def _cell_piece(
    plan: SummaryPlan,
    cube: Cube,
    filters: UsageFilters,
    span: Span,
    dialect: str,
    *,
    key_null: bool = False,
    negate: bool = False,
) -> Select[Any]:
    cells = rollups.c
    key = cast(null(), Text) if key_null or negate else _cell_key(plan.group_by, dialect)
    conditions = [cells.cube == cube.name, cells.grain == span.source]
    if span.start is not None:
        conditions.append(cells.bucket_start >= span.start)
    if span.end is not None:
        conditions.append(cells.bucket_start < span.end)
    conditions.extend(_cell_conditions(plan.group_by, cube, filters, dialect))
    measures = {
        **{name: name for name in ("requests", *SUMMARY_TOKENS, "cost_usd")},
        "unpriced_requests": "unpriced_requests",
        "tool_calls": "tool_calls",
        "errors": "error_requests",
    }
    values = (
        (-cells[column] if negate else cells[column]).label(name)
        for name, column in measures.items()
    )
    return select(key.label("key"), *values).where(*conditions)


def _cell_key(group_by: str, dialect: str) -> ColumnElement[Any]:
    cells = rollups.c
    if group_by in ("day", "hour"):
        return time_bucket(dialect, group_by, cells.bucket_start)
    if group_by.startswith("property:"):
        return cells.property_value
    column: ColumnElement[Any] = cells[_GROUP_DIMENSIONS[group_by]]
    return column


def _cell_conditions(
    group_by: str, cube: Cube, filters: UsageFilters, dialect: str
) -> Sequence[ColumnElement[bool]]:
    cells = rollups.c
    conditions: list[ColumnElement[bool]] = []
    for field, dimension in _FILTER_DIMENSIONS:
        value = getattr(filters, field)
        if value is not None:
            conditions.append(cells[dimension] == value)
    if cube.has_property:
        # One name per cube read: the filter's, or the group's (the planner saw to it).
        if filters.property_name is not None:
            conditions.append(cells.property_name == filters.property_name.lower())
            conditions.append(cells.property_value == filters.property_value)
            if dialect == "postgresql":  # what ix_rollups_property holds (migration 0010)
                conditions.append(
                    func.md5(cells.property_value) == func.md5(filters.property_value)
                )
        else:
            name = group_by.removeprefix("property:").lower()
            conditions.append(cells.property_name == name)
    return conditions


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _floor_day(moment: datetime) -> datetime:
    return _floor_hour(moment).replace(hour=0)


def _ceil_hour(moment: datetime) -> datetime:
    start = _floor_hour(moment)
    return start if start == moment else start + _HOUR


def _ceil_day(moment: datetime) -> datetime:
    start = _floor_day(moment)
    return start if start == moment else start + _DAY


def _floor_week(moment: datetime) -> datetime:
    return bucket_start(moment.astimezone(UTC), "week")


def _ceil_week(moment: datetime) -> datetime:
    start = _floor_week(moment)
    return start if start == moment else start + _WEEK
