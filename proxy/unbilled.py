"""Requests that certainly cost nothing, though no usage came back to price.

Providers bill tokens a model read or wrote. A request without a model (``GET /v1/models``,
file uploads), with another method than POST, or answered with an error status bills none
unless the provider says otherwise with usage. Such a request is recorded with cost 0, so
``unpriced_requests`` counts only what was billed at a price not known: usage without a
price, or a successful call to a model whose usage is unknown. Some calls are free
whatever they answer: Gemini's ``countTokens``.
"""

from __future__ import annotations

from proxy.gemini_api import gemini_call, is_native


def billed_nothing(
    *, method: str, status_code: int, model: str | None, has_usage: bool, endpoint: str = ""
) -> bool:
    """Whether a request without usage was certainly not billed."""
    if has_usage:
        return False
    if model is None or method.upper() != "POST" or not 200 <= status_code < 300:
        return True
    return is_native(endpoint) and not _billed_gemini_call(endpoint)


def _billed_gemini_call(endpoint: str) -> bool:
    call = gemini_call(endpoint.split("/", 2)[2])
    return call is None or call.billed
