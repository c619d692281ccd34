"""Errors tallyproxy itself raises, and their rendering in OpenAI's (or Gemini's) error shape.

    TallyError
    ├── ClientError                 4xx: the request is at fault
    │   ├── InvalidRequest          400: unreadable body, bad tag header, bad query parameter
    │   ├── Unauthorized            401: the usage API needs the admin token
    │   │   └── InvalidApiKey       401: unknown, revoked or expired virtual key
    │   ├── Forbidden               403: the credentials do not reach this far
    │   │   └── ModelNotAllowed     403: the virtual key may not call the model
    │   ├── NotFound                404
    │   ├── ModelNotRouted          404: no configured upstream serves the model
    │   ├── BodyTooLarge            413
    │   └── BudgetExceeded          429: a budget would be exceeded; names the budget
    ├── MissingUpstreamKey          500: a virtual key, but the upstream has no key configured
    ├── RecordsUnavailable          503: the request could not be metered (when_unrecordable)
    ├── DatabaseUnavailable         503: the database is needed to decide and is unavailable
    ├── UpstreamPoolExhausted       503: the proxy's own pool for the upstream stayed full
    └── UpstreamError               5xx: the provider could not be reached or answered badly
        ├── UpstreamUnreachable     502
        ├── UpstreamTimeout         504
        └── ProviderReportFailed    502: a provider's usage or cost report could not be read

Errors the upstream returns itself are not TallyErrors: they are forwarded unchanged.
Requests to Gemini's native API get them in Google's shape, so its SDKs raise as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

log = logging.getLogger(__name__)


class TallyError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """Sent with the error answer, whoever raises it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ClientError(TallyError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    code = "invalid_request"


class Unauthorized(ClientError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_admin_token"


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"


class Forbidden(ClientError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


class NotFound(ClientError):
    status_code = 404
    code = "not_found"


class ModelNotRouted(NotFound):
    code = "model_not_found"


class BodyTooLarge(ClientError):
    status_code = 413
    code = "request_too_large"


class BudgetExceeded(ClientError):
    status_code = 429
    error_type = "insufficient_quota"
    code = "budget_exceeded"
    # The OpenAI and Anthropic SDKs retry 429s unless told not to: the budget will not have
    # room a second later.
    headers = MappingProxyType({"x-should-retry": "false"})


class MissingUpstreamKey(TallyError):
    code = "upstream_key_missing"


class RecordsUnavailable(TallyError):
    status_code = 503
    code = "records_unavailable"


class DatabaseUnavailable(TallyError):
    status_code = 503
    code = "database_unavailable"


class UpstreamPoolExhausted(TallyError):
    """Not the upstream's fault: it was never asked, the proxy had no connection to spare."""

    status_code = 503
    code = "upstream_pool_exhausted"


class UpstreamError(TallyError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class ProviderReportFailed(UpstreamError):
    """Reconciliation: the provider refused the admin key, was down or sent a bad page."""

    code = "provider_report_failed"


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """The JSON body OpenAI uses for errors, so SDKs raise their usual exceptions."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


ErrorShape = Literal["openai", "gemini"]

# google.rpc status names by HTTP status, as Google's APIs pair them.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def gemini_error_body(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """The JSON body Google's APIs use for errors (``google.rpc.Status``); ``reason`` goes in
    an ``ErrorInfo`` detail, as Google names the cause (``API_KEY_INVALID``)."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"),
    }
    if reason is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason.upper(),
                "domain": "tallyproxy",
            }
        ]
    return {"error": error}


def error_response(
    exc: TallyError, headers: dict[str, str] | None = None, shape: ErrorShape = "openai"
) -> JSONResponse:
    """The answer for ``exc``, in the error shape of the API the client called."""
    if shape == "gemini":
        body: dict[str, Any] = gemini_error_body(exc.status_code, exc.message, exc.code)
    else:
        body = error_body(exc.message, exc.error_type, param=exc.param, code=exc.code)
    if exc.headers:
        headers = {**exc.headers, **(headers or {})}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error in OpenAI's shape; never a stack trace."""

    async def on_tally_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, TallyError)
        return error_response(exc)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = error_body(str(exc.detail), error_type, code=_http_code(exc.status_code))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = str(first.get("loc", ["", ""])[-1]) or None
        message = f"invalid parameter {param}: {first.get('msg', 'invalid value')}"
        body = error_body(message, "invalid_request_error", param=param, code="invalid_parameter")
        return JSONResponse(body, status_code=400)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body = error_body("internal error in tallyproxy; see its log", "server_error")
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(TallyError, on_tally_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)


def _http_code(status: int) -> str | None:
    return {404: "not_found", 405: "method_not_allowed"}.get(status)
