"""The HTTP APIs while the database is away: 503 ``database_unavailable``, not a 500.

A route of the usage, budget or admin API that needs the database while it is unreachable
(or not migrated yet, see ``proxy.store.availability``) answers 503 in OpenAI's error shape
and logs one line naming the database (its password as ``***``); any other database error
is a bug and goes the way of every unexpected error (logged with its traceback, 500).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from proxy.errors import DatabaseUnavailable, error_body, error_response
from proxy.store.availability import DATABASE_ERRORS, display_url, error_reason, is_unreachable

log = logging.getLogger(__name__)


def install_database_error_handler(app: FastAPI) -> None:
    """Answer 503 for the database errors of a database that is unavailable."""

    async def on_database_error(request: Request, exc: Exception) -> Response:
        schema = getattr(request.app.state, "schema", None)
        engine = getattr(request.app.state, "engine", None)
        backend = engine.dialect.name if engine is not None else ""
        if (schema is not None and not schema.ready) or is_unreachable(exc, backend):
            log.warning(
                "%s %s: 503, the database %s is unavailable (%s)",
                request.method,
                request.url.path,
                display_url(engine) if engine is not None else "",
                error_reason(exc),
            )
            return error_response(
                DatabaseUnavailable("the database is unavailable; try again shortly")
            )
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        body = error_body("internal error in tallyproxy; see its log", "server_error")
        return JSONResponse(body, status_code=500)

    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, on_database_error)
