"""Who may call the usage and admin APIs: the admin token, or a virtual key for its own usage.

Once ``admin_token`` is configured, ``/usage/*`` and ``/admin/*`` want it as a bearer token.
A virtual key (``Bearer tp-...``) is accepted on the routes that read usage, scoped to its
own records: ``request.state.key_id`` tells the handlers. The admin routes refuse it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request

from proxy.access.gate import Gate
from proxy.access.keys import is_virtual
from proxy.errors import Forbidden, InvalidApiKey, Unauthorized

Guard = Callable[[Request], Awaitable[None]]


def key_scope(request: Request) -> str | None:
    """The virtual key whose usage the caller may read; None for the admin (everything)."""
    scope: str | None = getattr(request.state, "key_id", None)
    return scope


def admin_guard(token: str | None) -> Guard:
    """Admin only: the admin token once configured; a virtual key is refused (403)."""

    async def guard(request: Request) -> None:
        given = _bearer(request)
        if given is not None and is_virtual(given):
            raise Forbidden("this API needs the admin token; a tallyproxy key reads /usage only")
        _check_admin(token, given)

    return guard


def usage_guard(token: str | None) -> Guard:
    """The admin token, or a virtual key that then reads its own usage only."""

    async def guard(request: Request) -> None:
        given = _bearer(request)
        if given is not None and is_virtual(given):
            gate: Gate = request.app.state.gate
            key = await gate.key(given)
            if key is None:
                raise InvalidApiKey("invalid tallyproxy key: unknown, revoked or expired")
            request.state.key_id = key.id
            return
        _check_admin(token, given)

    return guard


def _bearer(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def _check_admin(token: str | None, given: str | None) -> None:
    if token is None:
        return
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("this API needs 'Authorization: Bearer <admin token>'")
