"""Query parameters of the usage API: parsing and OpenAI-shaped errors for bad values."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.responses import JSONResponse

from proxy.errors import error_body
from proxy.store.queries import InvalidQuery


def parse_limit(value: str | None, maximum: int, default: int) -> int:
    """An integer page size from 1 to ``maximum``; ``default`` when absent."""
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise InvalidQuery(f"invalid limit {value!r}: an integer from 1 to {maximum}", "limit")
    return limit


def parse_property(value: str | None) -> tuple[str | None, str | None]:
    """``name:value`` (split at the first colon) -> (name, value); the name is lower-cased."""
    if value is None:
        return None, None
    name, colon, wanted = value.partition(":")
    if not colon or not name:
        raise InvalidQuery(
            f"invalid property {value!r}: use name:value, e.g. property=env:prod", "property"
        )
    return name.lower(), wanted


def parse_time(value: str | None, param: str) -> datetime | None:
    """ISO-8601 date or datetime; without an offset it is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidQuery(
            f"invalid {param} {value!r}: use ISO-8601, e.g. 2025-01-31T13:00:00Z", param
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def invalid_query(exc: InvalidQuery) -> JSONResponse:
    """400 in OpenAI's shape, naming the parameter."""
    return error_json(400, exc.message, exc.param)


def error_json(status: int, message: str, param: str | None) -> JSONResponse:
    body = error_body(message, "invalid_request_error", param=param)
    return JSONResponse(body, status_code=status)
