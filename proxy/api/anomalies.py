"""``GET /usage/anomalies``: the anomalies found (``proxy.anomalies``), newest window first.

Filters ``kind`` (session, user, key), ``subject``, ``since`` and ``until`` (bounds of the
window's start) and ``limit``. A caller with a virtual key sees its own key's anomalies only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import JSONResponse

from proxy.access.guard import key_scope
from proxy.api.params import invalid_query, parse_limit, parse_time
from proxy.store.anomalies import AnomalyStore, anomaly_json
from proxy.store.queries import InvalidQuery

KINDS = ("session", "user", "key")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Param = Annotated[str | None, Query()]


def anomalies_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    router = APIRouter()
    router.add_api_route(
        "/usage/anomalies",
        list_anomalies,
        methods=["GET"],
        dependencies=list(dependencies),
        tags=["usage"],
    )
    return router


async def list_anomalies(
    request: Request,
    kind: Param = None,
    subject: Param = None,
    since: Param = None,
    until: Param = None,
    limit: Param = None,
) -> JSONResponse:
    """``{"data": [anomaly...]}``, newest window first."""
    try:
        if kind is not None and kind not in KINDS:
            raise InvalidQuery(f"invalid kind {kind!r}: use one of {', '.join(KINDS)}", "kind")
        window = parse_time(since, "since"), parse_time(until, "until")
        page_size = parse_limit(limit, MAX_LIMIT, DEFAULT_LIMIT)
    except InvalidQuery as exc:
        return invalid_query(exc)
    scope = key_scope(request)
    if scope is not None:
        if kind not in (None, "key") or subject not in (None, scope):
            return JSONResponse({"data": []})
        kind, subject = "key", scope
    store = AnomalyStore(request.app.state.engine)
    rows = await store.listing(
        kind=kind, subject=subject, since=window[0], until=window[1], limit=page_size
    )
    return JSONResponse({"data": [anomaly_json(row) for row in rows]})
