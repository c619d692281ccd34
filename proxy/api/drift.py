"""``GET /usage/drift``: how far local token estimates can be trusted, per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.api.params import invalid_query, parse_time
from proxy.api.usage import with_read_source
from proxy.store.drift import drift_by_model
from proxy.store.queries import InvalidQuery
from proxy.store.replica import Reads


def drift_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    router = APIRouter()
    router.add_api_route(
        "/usage/drift", get_drift, methods=["GET"], dependencies=list(dependencies), tags=["usage"]
    )
    return router


async def get_drift(
    request: Request,
    model: Annotated[str | None, Query()] = None,
    since: Annotated[str | None, Query()] = None,
    until: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    """``{"sample_rate": r, "data": [{"model", "samples", "prompt": {...}, "completion": {...}}]}``.

    Each side has ``provider_tokens``, ``estimated_tokens``, ``drift_pct`` (signed, of the
    sums) and ``mean_abs_error_pct`` (per request).
    """
    # A scan of every sampled record: the read replica's work when there is one.
    engines: Reads[AsyncEngine] | None = getattr(request.app.state, "read_engines", None)
    if engines is None:
        engines = Reads(request.app.state.engine)
    try:
        window = parse_time(since, "since"), parse_time(until, "until")
        read = await engines.run(
            lambda engine: drift_by_model(engine, since=window[0], until=window[1], model=model)
        )
    except InvalidQuery as exc:
        return invalid_query(exc)
    rate = request.app.state.settings.metering.drift_sample_rate
    return with_read_source(read, JSONResponse({"sample_rate": rate, "data": read.value}))
