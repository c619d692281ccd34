"""Pure facts of the Azure OpenAI client's paths: the deployment named, the operation meant.

``AzureOpenAI(azure_endpoint=...)`` calls ``/openai/deployments/{deployment}/{operation}``
(and ``/openai/{operation}`` for what no deployment serves, like ``models``), with
``?api-version=`` and an ``api-key`` header; given ``base_url=.../v1`` it calls
``/v1/deployments/{deployment}/{operation}``. Each stands for the OpenAI API's
``/v1/{operation}``: served, routed and recorded as that, the deployment standing in for a
model the body does not name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes, urlencode

AZURE_PREFIX = "/openai/"
API_VERSION = "api-version"

_DEPLOYMENT = re.compile(r"/(?:openai|v1)/deployments/([^/]+)/(.+)")
_RAW_DEPLOYMENT = re.compile(rb"/(?:openai|v1)/deployments/[^/]+/")


@dataclass(frozen=True, slots=True)
class AzureCall:
    """``operation``: the path after ``/v1/`` the call stands for (``chat/completions``).

    ``raw_prefix``: the bytes of the request's raw path before the operation, so that it is
    sent upstream as the client encoded it; None when they cannot be told apart.
    """

    operation: str
    deployment: str | None
    raw_prefix: bytes | None

    @property
    def endpoint(self) -> str:
        """The OpenAI endpoint it is recorded as: ``/v1/chat/completions``."""
        return "/v1/" + self.operation


def azure_call(path: str, raw_path: bytes | None) -> AzureCall | None:
    """The call an Azure client's request ``path`` (decoded, from the root) makes, or None
    for any other path. ``raw_path`` is the path as sent (ASGI's ``raw_path``)."""
    if not path.startswith(AZURE_PREFIX) and "/deployments/" not in path:
        return None  # the common case, told without a regular expression
    found = _DEPLOYMENT.fullmatch(path)
    if found is not None:
        deployment, operation = found[1], found[2]
        return AzureCall(operation, deployment, _raw_prefix(raw_path, operation))
    if path.startswith(AZURE_PREFIX) and len(path) > len(AZURE_PREFIX):
        prefix = AZURE_PREFIX.encode() if raw_path and raw_path.startswith(b"/openai/") else None
        return AzureCall(path[len(AZURE_PREFIX) :], None, prefix)
    return None


def _raw_prefix(raw_path: bytes | None, operation: str) -> bytes | None:
    """The raw bytes before ``operation`` in a deployment path, or None if unsure (an encoded
    '/' in the deployment would make the operation start elsewhere)."""
    found = _RAW_DEPLOYMENT.match(raw_path) if raw_path else None
    if raw_path is None or found is None:
        return None
    if unquote_to_bytes(raw_path[found.end() :]) != operation.encode():
        return None
    return found[0]


def without_api_version(query: str) -> str:
    """The query without ``api-version``, which only Azure reads; unchanged without one."""
    if API_VERSION not in query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(name, value) for name, value in pairs if name != API_VERSION])
