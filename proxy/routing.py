"""Pure routing: which upstream serves a model, the URL to call and the credentials to send."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from proxy.config import UpstreamSettings

# Headers that carry a provider key, in any of the shapes the SDKs send.
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})


class NoRoute(LookupError):
    """No configured upstream serves the model."""


def choose_upstream(routes: Sequence[UpstreamSettings], model: str | None) -> UpstreamSettings:
    """The upstream for ``model``: an exact name wins over a glob, then the first catch-all.

    A route without ``models`` catches everything; requests without a model (``GET
    /v1/models``) go to the first catch-all, else to the first route.
    """
    if model is not None:
        for route in routes:
            if model in route.models:
                return route
        for route in routes:
            if any(fnmatchcase(model, pattern) for pattern in route.models):
                return route
    for route in routes:
        if not route.models:
            return route
    if model is None:
        return routes[0]
    raise NoRoute(f"no upstream is configured for model {model!r}; see 'upstreams:' in the config")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    query: dict[str, str]


def target(upstream: UpstreamSettings, path: str, model: str | None) -> Target:
    """Where ``/v1/<path>`` goes on ``upstream``.

    Azure with ``api_version`` uses deployment URLs:
    ``<url>/openai/deployments/<deployment>/<path>?api-version=<v>``, the deployment being the
    model's entry in ``deployments`` or the model name itself. Everything else is
    ``<url>/<path>``.
    """
    if upstream.kind == "azure" and upstream.api_version is not None:
        query = {"api-version": upstream.api_version}
        if model is None:
            return Target(f"{upstream.url}/openai/{path}", query)
        deployment = upstream.deployments.get(model, model)
        return Target(f"{upstream.url}/openai/deployments/{deployment}/{path}", query)
    return Target(f"{upstream.url}/{path}", {})


def credential_headers(
    upstream: UpstreamSettings, client_headers: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The key header the upstream expects: its configured key, or the client's own.

    The openai SDK always sends ``Authorization: Bearer``; Azure wants ``api-key`` and
    Anthropic ``x-api-key``, so a client's bearer key is moved to the header the kind expects.
    """
    sent = {name: value for name, value in client_headers if name in CREDENTIAL_HEADERS}
    header = {"azure": "api-key", "anthropic": "x-api-key"}.get(upstream.kind)
    if header is None:
        if upstream.api_key is not None:
            return [("authorization", f"Bearer {upstream.api_key}")]
        return list(sent.items())
    if upstream.api_key is not None:
        return [(header, upstream.api_key)]
    if header in sent:
        return [(header, sent[header])]
    scheme, _, token = sent.get("authorization", "").partition(" ")
    # A JWT is an Entra ID (Azure AD) token, which Azure takes as a bearer token.
    if scheme.lower() == "bearer" and token and not token.startswith("eyJ"):
        return [(header, token)]
    return list(sent.items())
