"""The usage REST API (``/usage/...``) and the health probes (``/healthz``, ``/readyz``).

Handlers read through ``request.app.state.reads`` (``Reads`` over ``UsageQueries``: the read
replica's or the primary's, see ``proxy.store.replica``; without it ``app.state.queries``
answers every read) and ask ``request.app.state.writer`` (``RecordWriter``) for /readyz.
Every answer of a read says where it came from (``X-Tally-Read-Source``) and, with a
replica, how far behind the primary it was (``X-Tally-Replica-Lag-Seconds``). Query
parameters are validated here and errors are rendered in OpenAI's shape by the routes
themselves, so the contract holds whatever handlers the app installs.
A caller with a virtual key (see ``proxy.access.guard``) reads only its own requests.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import JSONResponse

from proxy.access.guard import key_scope
from proxy.api.json_response import FastJSONResponse
from proxy.api.params import error_json, invalid_query, parse_limit, parse_property, parse_time
from proxy.api.serialize import record_json, session_json, stats_json, summary_row_json
from proxy.errors import error_body
from proxy.store.queries import GROUP_BY_CHOICES, InvalidQuery, UsageFilters, UsageQueries
from proxy.store.replica import Read, Reads

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_SUMMARY_GROUPS = 10000
PING_TIMEOUT = 2.0

READ_SOURCE_HEADER = "X-Tally-Read-Source"
REPLICA_LAG_HEADER = "X-Tally-Replica-Lag-Seconds"

Param = Annotated[str | None, Query()]
Value = TypeVar("Value")
PropertyParam = Annotated[str | None, Query(alias="property")]


def usage_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    """The routes of the usage API and health probes.

    ``dependencies`` (e.g. an admin-token check) apply to ``/usage/...`` only; the probes
    stay open for load balancers.
    """
    router = APIRouter()
    guarded = list(dependencies)
    router.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    router.add_api_route("/readyz", readyz, methods=["GET"], tags=["health"])
    for path, endpoint in (
        ("/usage/requests", list_requests),
        ("/usage/requests/{request_id}", get_request),
        ("/usage/sessions", list_sessions),
        ("/usage/sessions/{session_id:path}", get_session),  # an id may hold "/"
        ("/usage/summary", summary),
    ):
        router.add_api_route(path, endpoint, methods=["GET"], dependencies=guarded, tags=["usage"])
    return router


async def healthz() -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers, its schema is migrated, the writer is keeping up and
    a new record could be stored (``recordable``: not database down with the spool full, nor
    memory at its bound); 503 otherwise."""
    queries: UsageQueries = request.app.state.queries
    schema = getattr(request.app.state, "schema", None)
    migrated = schema is None or bool(schema.ready)
    try:
        database = migrated and await asyncio.wait_for(queries.ping(), PING_TIMEOUT)
    except TimeoutError:
        database = False
    writer = getattr(request.app.state, "writer", None)
    writer_stats: dict[str, Any] = writer.stats() if writer is not None else {"healthy": False}
    ready = database and bool(writer_stats["healthy"]) and writer_stats.get("recordable", False)
    body: dict[str, Any] = {
        "status": "ready" if ready else "unavailable",
        "database": database,
        "schema_migrated": migrated,
    }
    body |= stats_json({"writer_healthy": writer_stats.pop("healthy"), **writer_stats})
    monitor = _reads(request).monitor
    if monitor is not None:
        # Informative only: a replica lagging or down sends reads to the primary, so it
        # never makes the proxy unready.
        body["read_replica"] = monitor.stats()
    return JSONResponse(body, status_code=200 if ready else 503)


async def list_requests(
    request: Request,
    session_id: Param = None,
    user_id: Param = None,
    model: Param = None,
    since: Param = None,
    until: Param = None,
    limit: Param = None,
    cursor: Param = None,
    property_: PropertyParam = None,
) -> JSONResponse:
    """Records matching the filters, newest first: ``{"data": [...], "next_cursor": ...}``."""
    try:
        property_name, property_value = parse_property(property_)
        window = parse_time(since, "since"), parse_time(until, "until")
        page_size = parse_limit(limit, MAX_LIMIT, DEFAULT_LIMIT)
        read = await _read(
            request,
            lambda queries: queries.list_requests(
                session_id=session_id,
                user_id=user_id,
                model=model,
                since=window[0],
                until=window[1],
                limit=page_size,
                cursor=cursor,
                property_name=property_name,
                property_value=property_value,
                key_id=key_scope(request),
            ),
        )
    except InvalidQuery as exc:
        return invalid_query(exc)
    rows, next_cursor = read.value
    body = {"data": [record_json(r) for r in rows], "next_cursor": next_cursor}
    return _answer(read, body)


async def get_request(request: Request, request_id: str) -> JSONResponse:
    """One record; 404 when the id is unknown."""
    read = await _read(request, lambda q: q.get_request(request_id), confirm_missing=True)
    row, scope = read.value, key_scope(request)
    if row is None or (scope is not None and row["key_id"] != scope):
        return with_read_source(
            read, error_json(404, f"no request with id {request_id!r}", "request_id")
        )
    return _answer(read, record_json(row))


async def list_sessions(
    request: Request,
    user_id: Param = None,
    since: Param = None,
    until: Param = None,
    limit: Param = None,
    cursor: Param = None,
    property_: PropertyParam = None,
) -> JSONResponse:
    """Session summaries, most recent activity first: ``{"data": [...], "next_cursor": ...}``."""
    if key_scope(request) is not None:
        return _admin_only()
    try:
        property_name, property_value = parse_property(property_)
        window = parse_time(since, "since"), parse_time(until, "until")
        page_size = parse_limit(limit, MAX_LIMIT, DEFAULT_LIMIT)
        read = await _read(
            request,
            lambda queries: queries.list_sessions(
                user_id=user_id,
                since=window[0],
                until=window[1],
                limit=page_size,
                cursor=cursor,
                property_name=property_name,
                property_value=property_value,
            ),
        )
    except InvalidQuery as exc:
        return invalid_query(exc)
    rows, next_cursor = read.value
    body = {"data": [session_json(r) for r in rows], "next_cursor": next_cursor}
    return _answer(read, body)


async def get_session(request: Request, session_id: str) -> JSONResponse:
    """One session summary; 404 when no request of that session was recorded."""
    if key_scope(request) is not None:
        return _admin_only()
    read = await _read(request, lambda q: q.get_session(session_id), confirm_missing=True)
    if read.value is None:
        return with_read_source(
            read, error_json(404, f"no session with id {session_id!r}", "session_id")
        )
    return _answer(read, session_json(read.value))


async def summary(
    request: Request,
    group_by: Param = None,
    session_id: Param = None,
    user_id: Param = None,
    model: Param = None,
    since: Param = None,
    until: Param = None,
    limit: Param = None,
    property_: PropertyParam = None,
) -> JSONResponse:
    """Totals per group: ``{"group_by": G, "data": [{"key": ..., "requests": ...}, ...]}``."""
    try:
        property_name, property_value = parse_property(property_)
        if not group_by:
            choices = ", ".join((*GROUP_BY_CHOICES, "property:<name>"))
            raise InvalidQuery(f"group_by is required: one of {choices}", "group_by")
        filters = UsageFilters(
            session_id=session_id,
            user_id=user_id,
            model=model,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            property_name=property_name,
            property_value=property_value,
            key_id=key_scope(request),
        )
        max_groups = parse_limit(limit, MAX_SUMMARY_GROUPS, MAX_SUMMARY_GROUPS)
        read = await _read(request, lambda q: q.summary(group_by, filters, limit=max_groups))
    except InvalidQuery as exc:
        return invalid_query(exc)
    return _answer(read, {"group_by": group_by, "data": [summary_row_json(r) for r in read.value]})


def _admin_only() -> JSONResponse:
    # A session's totals may hold other keys' requests: they are for the admin to read.
    message = "session totals need the admin token; a tallyproxy key reads its own requests"
    body = error_body(message, "permission_error", code="forbidden")
    return JSONResponse(body, status_code=403)


def _reads(request: Request) -> Reads[UsageQueries]:
    reads: Reads[UsageQueries] | None = getattr(request.app.state, "reads", None)
    return reads if reads is not None else Reads(request.app.state.queries)


async def _read(
    request: Request,
    read: Callable[[UsageQueries], Awaitable[Value]],
    *,
    confirm_missing: bool = False,
) -> Read[Value]:
    return await _reads(request).run(read, confirm_missing=confirm_missing)


def _answer(read: Read[Any], body: Any) -> JSONResponse:
    return with_read_source(read, FastJSONResponse(body))


def with_read_source(read: Read[Any], response: JSONResponse) -> JSONResponse:
    """``response`` with the headers that say which database answered, and its lag."""
    response.headers[READ_SOURCE_HEADER] = read.source
    if read.replica_lag is not None:
        # Rounded up: a staleness bound must not read as within a limit it is past.
        response.headers[REPLICA_LAG_HEADER] = f"{math.ceil(read.replica_lag * 10) / 10:.1f}"
    return response
