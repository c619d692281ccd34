"""A short way in for proxied requests: ``/v1/...`` (Gemini's ``/v1beta/...``, the Azure
OpenAI client's ``/openai/...``) goes straight to the forwarder.

FastAPI's stack (error, body-limit, telemetry and exit-stack middleware, then route matching
over every API route) cost about as much CPU as the forwarding itself; the forwarder needs
none of it: it reads its own body with a limit and renders its own errors. Everything else
(``/usage``, ``/healthz``, the lifespan) goes to the app unchanged.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from proxy.azure_paths import AZURE_PREFIX
from proxy.errors import error_body

log = logging.getLogger(__name__)

PREFIX = "/v1/"
GEMINI_PREFIX = "/v1beta/"
PREFIXES = (PREFIX, GEMINI_PREFIX, AZURE_PREFIX)
MAX_HEADER_BYTES = 64 * 1024


class ProxyFastPath:
    """Wrap the app; ``/v1/<path>``, ``/v1beta/<path>`` and ``/openai/<path>`` HTTP requests
    skip its middleware and routing."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and _header_bytes(scope) > MAX_HEADER_BYTES:
            # httptools sets no bound of its own, and the headers would be forwarded upstream.
            message = f"request headers exceed {MAX_HEADER_BYTES} bytes"
            body = error_body(message, "invalid_request_error", code="headers_too_large")
            await JSONResponse(body, status_code=431)(scope, receive, send)
            return
        prefix = next((p for p in PREFIXES if path.startswith(p)), None)
        if scope["type"] != "http" or prefix is None:
            nul_in = _nul_parameter(scope) if scope["type"] == "http" else None
            if nul_in is not None:
                # No stored id or filter value holds NUL, and Postgres refuses it in a query.
                message = f"invalid {nul_in}: it contains a NUL character"
                body = error_body(
                    message, "invalid_request_error", param=nul_in, code="invalid_parameter"
                )
                await JSONResponse(body, status_code=400)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        scope["path_params"] = {"path": path[len(prefix) :]}
        request = Request(scope, receive, send)
        try:
            response = await self.app.state.forwarder.handle(request)
        except Exception:
            # The boundary the app's own handler would be: log, and answer in OpenAI's shape.
            log.exception("unexpected error on %s %s", request.method, path)
            body = error_body("internal error in tallyproxy; see its log", "server_error")
            response = JSONResponse(body, status_code=500)
        await response(scope, receive, send)


def _header_bytes(scope: Scope) -> int:
    return sum(len(name) + len(value) for name, value in scope["headers"])


def _nul_parameter(scope: Scope) -> str | None:
    """Where a NUL character hides: ``path`` or the query parameter's name; None if nowhere."""
    if "\x00" in scope.get("path", ""):
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query:
        return None
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if b"%00" in value or b"%00" in name:
            return unquote_plus(name.decode("latin-1")).replace("\x00", "") or "query"
    return "query"
