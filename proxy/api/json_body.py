"""Admin request bodies: JSON whatever ``Content-Type`` says, as OpenAI's API reads them.

``curl -d '{...}'`` declares ``application/x-www-form-urlencoded``; FastAPI reads a body
model only from a body declared JSON and answered such a request with "Input should be a
valid dictionary". A body that parses as a JSON object is taken whatever its declared type;
one that does not gets a 400 saying that the body must be JSON. The fields are then checked
as before: a bad one is a 400 naming it (``param``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from proxy.body import read_body
from proxy.errors import InvalidRequest
from proxy.forms import media_type

Model = TypeVar("Model", bound=BaseModel)


def json_body(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """A FastAPI dependency: the request body read as JSON and validated as ``model``."""

    async def read(request: Request) -> Model:
        limit: int = request.app.state.settings.server.max_body_bytes
        parsed = _json_object(await read_body(request, limit), request)
        try:
            return model.model_validate(parsed)
        except ValidationError as exc:
            # Located in the body, as FastAPI's own errors are, so the handler names the field.
            errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            raise RequestValidationError(errors) from None

    return read


def _json_object(body: bytes, request: Request) -> dict[str, Any]:
    declared = media_type(request.headers.get("content-type", "")) or "no Content-Type"
    try:
        # The standard library's parser, as FastAPI used: it keeps big integers and reads
        # NaN and Infinity, so the fields' own checks refuse them by name.
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = "it is empty" if not body.strip() else f"it does not parse as JSON ({exc})"
        raise InvalidRequest(
            f"the body of {request.method} {request.url.path} must be a JSON object; "
            f"{reason} (sent as {declared})",
            param="body",
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(
            f"the body of {request.method} {request.url.path} must be a JSON object, "
            f"not {type(parsed).__name__}",
            param="body",
        )
    return parsed
