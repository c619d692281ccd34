"""A short way in for proxied requests: ``/v1/...`` goes straight to the forwarder.

FastAPI's stack (error, body-limit, telemetry and exit-stack middleware, then route matching
over every API route) cost about as much CPU as the forwarding itself; the forwarder needs
none of it: it reads its own body with a limit and renders its own errors. Everything else
(``/usage``, ``/healthz``, the lifespan) goes to the app unchanged.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from proxy.errors import error_body

log = logging.getLogger(__name__)

PREFIX = "/v1/"


class ProxyFastPath:
    """Wrap the app; ``/v1/<path>`` HTTP requests skip its middleware and routing."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        scope["path_params"] = {"path": path[len(PREFIX) :]}
        request = Request(scope, receive, send)
        try:
            response = await self.app.state.forwarder.handle(request)
        except Exception:
            # The boundary the app's own handler would be: log, and answer in OpenAI's shape.
            log.exception("unexpected error on %s %s", request.method, path)
            body = error_body("internal error in tallyproxy; see its log", "server_error")
            response = JSONResponse(body, status_code=500)
        await response(scope, receive, send)
