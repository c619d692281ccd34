"""``GET /usage/prices``: the price tallyproxy will use for a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import JSONResponse

from proxy.errors import error_body
from proxy.pricing import PriceBook


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
    described = prices.describe(model, provider=provider)
    if described is None:
        message = (
            f"no price known for model {model!r}; add one under 'prices:' in the config "
            "(see config.example.yaml)"
        )
        body = error_body(message, "invalid_request_error", param="model", code="unknown_price")
        return JSONResponse(body, status_code=404)
    return JSONResponse(described)
