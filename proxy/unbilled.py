"""Requests that certainly cost nothing, though no usage came back to price.

Providers bill tokens a model read or wrote. A request without a model (``GET /v1/models``,
file uploads), with another method than POST, or answered with an error status bills none
unless the provider says otherwise with usage. Such a request is recorded with cost 0, so
``unpriced_requests`` counts only what was billed at a price not known: usage without a
price, or a successful call to a model whose usage is unknown.
"""

from __future__ import annotations


def billed_nothing(*, method: str, status_code: int, model: str | None, has_usage: bool) -> bool:
    """Whether a request without usage was certainly not billed."""
    if has_usage:
        return False
    return model is None or method.upper() != "POST" or not 200 <= status_code < 300
