"""A client whose base URL lacks ``/v1``: a 404 that says what to fix.

The OpenAI SDKs append ``/chat/completions`` to the base URL they are given, so
``base_url="http://127.0.0.1:8080"`` sends ``/chat/completions``, which the proxy does not
forward. The answer is the 404 an SDK raises (``NotFoundError``) in OpenAI's error shape, its
message naming the base URL to use. Nothing is sent upstream and nothing is recorded.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from proxy.errors import error_body

# First path segments of the OpenAI API (and Anthropic's ``/v1/messages``); none of them is a
# route of tallyproxy's own.
API_ROOTS = (
    "assistants",
    "audio",
    "batches",
    "chat",
    "completions",
    "containers",
    "conversations",
    "embeddings",
    "evals",
    "files",
    "fine_tuning",
    "images",
    "messages",
    "models",
    "moderations",
    "realtime",
    "responses",
    "threads",
    "uploads",
    "vector_stores",
)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def missing_v1_router() -> APIRouter:
    """``/<API root>[/...]`` without ``/v1``: 404 ``not_found``, saying to add ``/v1``."""
    router = APIRouter(include_in_schema=False)
    for root in API_ROOTS:
        router.add_api_route(f"/{root}", missing_v1, methods=METHODS)
        router.add_api_route(f"/{root}/{{rest:path}}", missing_v1, methods=METHODS)
    return router


async def missing_v1(request: Request) -> JSONResponse:
    raw: bytes | None = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.url.path  # as sent: %2F stays encoded
    base = str(request.base_url).rstrip("/")
    message = (
        f"tallyproxy serves the OpenAI API under /v1, and {path} lacks it: add /v1 to the "
        f"client's base URL (base_url={base}/v1, OPENAI_BASE_URL={base}/v1), which makes "
        f"this request {request.method} /v1{path}"
    )
    body = error_body(message, "invalid_request_error", code="not_found")
    return JSONResponse(body, status_code=404)
