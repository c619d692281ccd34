"""The admin REST API: virtual keys (``/admin/keys``).

``POST /admin/keys`` issues a key and returns it once (``key``); listings show only its
display prefix. ``DELETE /admin/keys/{id}`` revokes it: at once on this replica, within
``access.key_cache_seconds`` on the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, params
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from proxy.access.gate import Gate
from proxy.api.params import error_json
from proxy.api.serialize import iso_utc
from proxy.store.access import KeyStore


class NewKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    user: str | None = Field(default=None, min_length=1, max_length=256)
    models: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None


def admin_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    """The routes of the admin API, behind ``dependencies`` (the admin-token check)."""
    router = APIRouter(prefix="/admin", dependencies=list(dependencies), tags=["admin"])
    router.add_api_route("/keys", create_key, methods=["POST"], status_code=201)
    router.add_api_route("/keys", list_keys, methods=["GET"])
    router.add_api_route("/keys/{key_id}", revoke_key, methods=["DELETE"])
    return router


async def create_key(request: Request, body: NewKeyRequest) -> JSONResponse:
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
