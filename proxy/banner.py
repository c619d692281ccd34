"""What ``tallyproxy serve`` prints once it is ready: where to point clients and what it runs.

:func:`banner_lines` is pure, over the settings and the access mode; :class:`AnnounceWhenReady`
logs them when the app's lifespan reports start-up complete: a start-up that fails (the
database misconfigured, say) never claims to be ready.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import __version__
from proxy.access.mode import AccessMode, holds_provider_key
from proxy.config import Settings

log = logging.getLogger("proxy.banner")


def redacted_url(url: str) -> str:
    """A database URL as it may be shown: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # unparsable: shown without whatever precedes the host
        return url.rsplit("@", 1)[-1]


def base_url(host: str, port: int) -> str:
    """The proxy's root as a client on this machine reaches it."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def access_lines(settings: Settings, mode: AccessMode) -> list[str]:
    """Whether the admin token and virtual keys are required, in so many words."""
    token = "required" if settings.admin_token is not None else "not required"
    keyed = [route.name for route in settings.routes if holds_provider_key(route)]
    if settings.access.require_virtual_keys:
        keys = "required on every /v1 request"
    elif keyed and mode.name == "anonymous":
        keys = f"optional: requests without one use the proxy's key for {', '.join(keyed)}"
    elif keyed:
        keys = f"required for requests to {', '.join(keyed)} (the proxy holds their key)"
    else:
        keys = "not required: clients send their own provider keys"
    return [
        f"access      {mode.name}: admin token {token} for /usage and /admin",
        f"virtual keys {keys}",
    ]


def banner_lines(settings: Settings, mode: AccessMode, *, workers: int = 1) -> list[str]:
    """The lines of the ready banner, without secrets (no key, token or password)."""
    root = base_url(settings.server.host, settings.server.port)
    listen = f"{settings.server.host or '*'}:{settings.server.port}"
    lines = [
        f"tallyproxy {__version__} ready" + (f" ({workers} workers)" if workers > 1 else ""),
        f"listening   {listen}; clients use base URL {root}/v1",
        f"dashboard   {root}/dashboard/",
        f"usage API   {root}/usage",
        f"database    {redacted_url(settings.database.url)}",
    ]
    if settings.database.read_url is not None:
        lines.append(f"reads from  {redacted_url(settings.database.read_url)}")
    for route in settings.routes:
        models = ", ".join(route.models) or "every other model"
        lines.append(f"upstream    {route.name} ({route.kind}) {route.url}: {models}")
    lines.extend(access_lines(settings, mode))
    return lines


class AnnounceWhenReady:
    """ASGI middleware: log ``lines`` when the lifespan reports start-up complete."""

    def __init__(self, app: ASGIApp, lines: list[str]) -> None:
        self.app = app
        self.lines = lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def announce(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                for line in self.lines:
                    log.info("%s", line)

        await self.app(scope, receive, announce)
