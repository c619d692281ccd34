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

from proxy.config import UpstreamSettings
from proxy.errors import error_body
from proxy.pricing import PriceBook
from proxy.routing import NoRoute, choose_upstream


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
) -> JSONResponse:
    """The price entry for ``model``: rates in USD per million tokens, source and version."""
    if not model:
        body = error_body(
            "model is required, e.g. /usage/prices?model=gpt-4o",
            "invalid_request_error",
            param="model",
        )
        return JSONResponse(body, status_code=400)
    prices: PriceBook = request.app.state.prices
    if provider is None:
        provider = pricing_provider(request.app.state.settings.routes, model)
    described = prices.describe(model, provider=provider)
    if described is None:
        message = (
            f"no price known for model {model!r}; add one under 'prices:' in the config "
            "(see config.example.yaml)"
        )
        body = error_body(message, "invalid_request_error", param="model", code="unknown_price")
        return JSONResponse(body, status_code=404)
    return JSONResponse(described)


def pricing_provider(routes: Sequence[UpstreamSettings], model: str) -> str | None:
    """The provider hint a request for ``model`` is priced with: its upstream's."""
    try:
        return choose_upstream(routes, model).pricing_provider
    except NoRoute:
        return None
