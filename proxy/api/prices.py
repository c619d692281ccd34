"""``GET /usage/prices``: the price tallyproxy will use for a model.

Requests are priced with the price list of the upstream that serves them (its ``provider``,
or its kind's), so the answer looks the model up the same way unless ``provider`` is given:
the upstream the model routes to decides. Without that hint a listing of another provider
(or none) could answer, and the prices shown would not be the ones charged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import JSONResponse

from proxy.api.params import invalid_query, parse_time
from proxy.errors import error_body
from proxy.price_hint import provider_for_model
from proxy.pricing import PriceBook
from proxy.store.queries import InvalidQuery


def prices_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    router = APIRouter()
    router.add_api_route(
        "/usage/prices", get_price, methods=["GET"], dependencies=list(dependencies), tags=["usage"]
    )
    return router


async def get_price(
    request: Request,
    model: Annotated[str | None, Query()] = None,
    provider: Annotated[str | None, Query()] = None,
    at: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    """The price entry for ``model``: rates in USD per million tokens, source and version.

    ``at`` (ISO-8601, default now) picks the rates in force then: genai-prices has prices
    that change by date and by time of day (DeepSeek's off-peak half rate).
    """
    if not model:
        body = error_body(
            "model is required, e.g. /usage/prices?model=gpt-4o",
            "invalid_request_error",
            param="model",
        )
        return JSONResponse(body, status_code=400)
    try:
        moment = parse_time(at, "at")
    except InvalidQuery as exc:
        return invalid_query(exc)
    prices: PriceBook = request.app.state.prices
    if provider is None:
        provider = provider_for_model(request.app.state.settings.routes, model)
    described = prices.describe(model, provider=provider, at=moment)
    if described is None:
        message = (
            f"no price known for model {model!r}; add one under 'prices:' in the config "
            "(see config.example.yaml)"
        )
        body = error_body(message, "invalid_request_error", param="model", code="unknown_price")
        return JSONResponse(body, status_code=404)
    return JSONResponse(described)
