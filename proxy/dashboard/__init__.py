"""The web dashboard at ``/dashboard/``: static HTML, CSS and JavaScript modules.

The page holds no data: its scripts read the usage API (``/usage/...``) from the browser,
with the admin token the user pastes into it. So the files are served as they are, without
the admin guard, and there is no build step: what is in ``static/`` is what the browser gets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request, params
from starlette.responses import RedirectResponse, Response

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Scripts, styles and requests from this origin only; nothing inline, nothing from a CDN.
# Inline SVG drawn by the scripts needs no exception.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


def load_static_files() -> dict[str, StaticFile]:
    """Every file of ``static/`` by name, read once when the router is made."""
    files = {}
    for entry in (resources.files(__name__) / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            files[entry.name] = StaticFile(body, MEDIA_TYPES[suffix], etag)
    return files


def dashboard_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    """``/dashboard/`` (the page), ``/dashboard/static/<file>``, and ``/`` redirected to it.

    ``dependencies`` apply to every route of the dashboard; the app gives none, since the
    files carry no data and the page sends the admin token with its API calls itself.
    """
    files = load_static_files()
    router = APIRouter(dependencies=list(dependencies), include_in_schema=False)

    async def redirect() -> Response:
        # Relative, so that the page also works behind a reverse proxy's path prefix.
        return RedirectResponse("dashboard/", status_code=308)

    async def index(request: Request) -> Response:
        return _serve(request, files["index.html"])

    async def static(request: Request, name: str) -> Response:
        found = files.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return _serve(request, found)

    async def root() -> Response:
        # What a browser opened at the proxy's address wants; temporary, as it may change.
        return RedirectResponse("dashboard/", status_code=307)

    router.add_api_route("/", root, methods=["GET"])
    router.add_api_route("/dashboard", redirect, methods=["GET"])
    router.add_api_route("/dashboard/", index, methods=["GET"])
    router.add_api_route("/dashboard/static/{name}", static, methods=["GET"])
    return router


def _serve(request: Request, file: StaticFile) -> Response:
    headers = {
        "ETag": file.etag,
        # Revalidate every time: a new version of the proxy must not run yesterday's script.
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
    }
    if request.headers.get("if-none-match") == file.etag:
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)
