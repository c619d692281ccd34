"""The admin REST API: virtual keys (``/admin/keys``) and budgets (``/admin/budgets``).

``POST /admin/keys`` issues a key and returns it once (``key``); listings show only its
display prefix. ``DELETE /admin/keys/{id}`` revokes it: at once on this replica, within
``access.key_cache_seconds`` on the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, params
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from proxy.access.budgets import Budgets
from proxy.access.gate import Gate
from proxy.api.json_body import json_body
from proxy.api.params import error_json
from proxy.spend.actions import parse_actions
from proxy.spend.periods import Period
from proxy.spend.view import budget_json
from proxy.store.access import KeyStore
from proxy.store.types import MAX_BIGINT
from proxy.timestamps import iso_utc


class NewKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    user: str | None = Field(default=None, min_length=1, max_length=256)
    models: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None


class NewBudgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=256)
    scope: Literal["key", "user", "session", "global"]
    subject: str | None = Field(default=None, min_length=1, max_length=256)
    period: Period
    # The database's own bound (smaller on SQLite) is checked by the store, also with a 400.
    usd: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0, le=MAX_BIGINT)
    alerts: list[int] = Field(default_factory=list)
    actions: Any = None  # read by parse_actions, whose errors name the action at fault

    @model_validator(mode="after")
    def _consistent(self) -> NewBudgetRequest:
        if (self.usd is None) == (self.tokens is None):
            raise ValueError("give usd or tokens, one of them")
        if (self.scope == "global") != (self.subject is None):
            raise ValueError("subject names the key id, user or session; none for global")
        if any(not 0 < a <= 1000 for a in self.alerts):
            raise ValueError("alerts are percentages of the limit, e.g. [50, 80, 100]")
        parse_actions(self.actions)  # an ActionError is a ValueError: a 400 naming it
        return self


def admin_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    """The routes of the admin API, behind ``dependencies`` (the admin-token check)."""
    router = APIRouter(prefix="/admin", dependencies=list(dependencies), tags=["admin"])
    router.add_api_route("/keys", create_key, methods=["POST"], status_code=201)
    router.add_api_route("/keys", list_keys, methods=["GET"])
    router.add_api_route("/keys/{key_id}", revoke_key, methods=["DELETE"])
    router.add_api_route("/budgets", create_budget, methods=["POST"], status_code=201)
    router.add_api_route("/budgets/{budget_id}", delete_budget, methods=["DELETE"])
    return router


async def create_key(
    request: Request, body: Annotated[NewKeyRequest, Depends(json_body(NewKeyRequest))]
) -> JSONResponse:
    """Issue a key: ``{"key": "tp-...", ...}``; the key is not shown again."""
    key, row = await _keys(request).create(
        body.name, user_id=body.user, models=body.models, expires_at=body.expires_at
    )
    return JSONResponse({"key": key.secret, **key_json(row)}, status_code=201)


async def list_keys(request: Request) -> JSONResponse:
    """Every key, newest first, without the keys themselves."""
    rows = await _keys(request).list()
    return JSONResponse({"data": [key_json(row) for row in rows]})


async def revoke_key(request: Request, key_id: str) -> JSONResponse:
    """Revoke a key; 404 when unknown."""
    if not await _keys(request).revoke(key_id):
        return error_json(404, f"no key with id {key_id!r}", "key_id")
    gate: Gate = request.app.state.gate
    gate.forget(key_id)
    return JSONResponse({"id": key_id, "revoked": True})


async def create_budget(
    request: Request, body: Annotated[NewBudgetRequest, Depends(json_body(NewBudgetRequest))]
) -> JSONResponse:
    """Define a budget; it applies on this replica at once, on the others within seconds."""
    budgets: Budgets = request.app.state.budgets
    row = await budgets.store.create(
        name=body.name or f"{body.scope}:{body.subject or '*'}:{body.period}",
        scope=body.scope,
        subject=body.subject,
        period=body.period,
        limit_usd=body.usd,
        limit_tokens=body.tokens,
        alerts=body.alerts,
        actions=parse_actions(body.actions),
    )
    await budgets.refresh()
    [status] = [r for r in await budgets.store.status(row["created_at"]) if r["id"] == row["id"]]
    return JSONResponse(budget_json(status), status_code=201)


async def delete_budget(request: Request, budget_id: str) -> JSONResponse:
    """Remove a budget and its spend; 404 when unknown."""
    budgets: Budgets = request.app.state.budgets
    if not await budgets.store.delete(budget_id):
        return error_json(404, f"no budget with id {budget_id!r}", "budget_id")
    await budgets.refresh()
    return JSONResponse({"id": budget_id, "deleted": True})


def key_json(row: dict[str, Any]) -> dict[str, Any]:
    """A key as the API shows it: never its hash."""
    return {
        "id": row["id"],
        "name": row["name"],
        "user": row["user_id"],
        "prefix": row["display_prefix"],
        "models": list(row["models"] or []),
        "created_at": iso_utc(row["created_at"]),
        "expires_at": iso_utc(row["expires_at"]),
        "revoked_at": iso_utc(row["revoked_at"]),
    }


def _keys(request: Request) -> KeyStore:
    store: KeyStore = request.app.state.keys
    return store
