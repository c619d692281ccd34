"""``GET /usage/budgets``: each budget, its spend this period, what remains and when it resets.

With a virtual key as the bearer token, only the budgets on that key are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, params
from fastapi.responses import JSONResponse

from proxy.access.guard import key_scope
from proxy.api.serialize import iso_utc, money
from proxy.store.budgets import BudgetStore
from proxy.store.types import EXACT


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


def budget_json(row: dict[str, Any]) -> dict[str, Any]:
    """A budget and its current period as the API shows it."""
    remaining_usd: Decimal | None = None
    if row["limit_usd"] is not None:
        used = EXACT.add(row["spent_usd"], row["reserved_usd"])
        remaining_usd = max(Decimal(0), EXACT.subtract(row["limit_usd"], used))
    remaining_tokens: int | None = None
    if row["limit_tokens"] is not None:
        used_tokens = row["spent_tokens"] + row["reserved_tokens"]
        remaining_tokens = max(0, row["limit_tokens"] - used_tokens)
    return {
        "id": row["id"],
        "name": row["name"],
        "scope": row["scope"],
        "subject": row["subject"],
        "period": row["period"],
        "limit_usd": money(row["limit_usd"]),
        "limit_tokens": row["limit_tokens"],
        "alerts": list(row["alerts"] or []),
        "period_start": iso_utc(row["period_start"]),
        "resets_at": iso_utc(row["resets_at"]),
        "spent_usd": money(row["spent_usd"]),
        "spent_tokens": row["spent_tokens"],
        "reserved_usd": money(row["reserved_usd"]),
        "reserved_tokens": row["reserved_tokens"],
        "remaining_usd": money(remaining_usd),
        "remaining_tokens": remaining_tokens,
    }
