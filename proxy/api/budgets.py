"""``GET /usage/budgets``: each budget, its spend this period, what remains and when it resets.

With a virtual key as the bearer token, only the budgets on that key are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from fastapi import APIRouter, Request, params
from fastapi.responses import JSONResponse

from proxy.access.guard import key_scope
from proxy.spend.view import budget_json
from proxy.store.budgets import BudgetStore


def budgets_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    router = APIRouter()
    router.add_api_route(
        "/usage/budgets",
        list_budgets,
        methods=["GET"],
        dependencies=list(dependencies),
        tags=["usage"],
    )
    return router


async def list_budgets(request: Request) -> JSONResponse:
    """``{"data": [budget...]}`` with spend, reservations, remaining and reset time."""
    store: BudgetStore = request.app.state.budgets.store
    rows = await store.status(datetime.now(UTC), key_scope(request))
    return JSONResponse({"data": [budget_json(row) for row in rows]})
