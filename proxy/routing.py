"""Pure routing: which upstream serves a model, the URL to call and the credentials to send."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import quote, quote_from_bytes

from proxy.config import UpstreamSettings

# Headers that carry a provider key, in any of the shapes the SDKs send.
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})
# The header each kind takes its key in, when not ``Authorization: Bearer``.
_KEY_HEADERS = {"azure": "api-key", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}
# Bearer tokens that are not API keys, and stay bearer tokens: a JWT is an Entra ID (Azure
# AD) token, ``ya29.`` a Google OAuth access token.
_OAUTH_TOKENS = ("eyJ", "ya29.")


class NoRoute(LookupError):
    """No configured upstream serves the model."""


class UnsafePath(ValueError):
    """A ``/v1`` path (or a model used as a path segment) that would change the target.

    ``param`` names where it came from: ``path`` or ``model``.
    """

    def __init__(self, message: str, param: str = "path") -> None:
        super().__init__(message)
        self.param = param


# What, once percent-decoded, would let a path reach another target than the one it names:
# a query or fragment (``%3F``, ``%23``), a backslash (a separator to some servers), a '%'
# left over (double encoding, decoded again upstream), control characters, U+FFFD (bytes
# that were not UTF-8) and dot segments. An encoded '/' joined to a dot segment
# (``..%2F``) is a dot segment once decoded; alone it is forwarded still encoded, as the
# openai SDK sends ``models.retrieve("org/model")``.
_UNSAFE = re.compile(r"[?#\\%\x00-\x1f\x7f-\x9f\ufffd]|(?:^|/)\.\.?(?:/|$)")
_PROBLEMS = {
    "?": "a '?' (the query starts after the path, unencoded)",
    "#": "a '#'",
    "\\": "a backslash",
    "%": "a '%' after decoding (percent-encoded twice)",
    "\ufffd": "bytes that are not UTF-8",
}
# Sent as is in an upstream URL: RFC 3986 unreserved and sub-delimiters, ':', '@' and '/'.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


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


def check_path(path: str) -> None:
    """Raise ``UnsafePath`` for a ``/v1`` path that could reach another upstream target.

    ``path`` is the part after ``/v1/``, percent-decoded (ASGI's ``path``).
    """
    found = _UNSAFE.search(path)
    if found is not None:
        raise UnsafePath(f"invalid path {'/v1/' + path!r}: it contains {_problem(found[0])}")


def upstream_path(path: str, raw_path: bytes | None, prefix: bytes = b"/v1/") -> str:
    """The checked path to send upstream, percent-encoded: as the client encoded it.

    ``raw_path`` is the request's path as sent (ASGI's ``raw_path``); without it, or when
    it does not start with ``prefix`` (``/v1/``, ``/v1beta/``) literally, the decoded
    ``path`` is encoded again.
    """
    if raw_path is not None and raw_path.startswith(prefix):
        return quote_from_bytes(raw_path[len(prefix) :], safe=_PATH_SAFE + "%")
    return quote(path, safe=_PATH_SAFE)


def _problem(match: str) -> str:
    char = match.strip("/")
    if char in (".", ".."):
        return f"a {char!r} segment"
    return _PROBLEMS.get(char, f"the control character {char!r}")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    query: dict[str, str]


def target(upstream: UpstreamSettings, path: str, model: str | None, version: str = "v1") -> Target:
    """Where ``/<version>/<path>`` goes on ``upstream``.

    Azure with ``api_version`` uses deployment URLs:
    ``<url>/openai/deployments/<deployment>/<path>?api-version=<v>``, the deployment being the
    model's entry in ``deployments`` or the model name itself. Gemini's ``url`` is the API
    root, and the client's version stays: ``<url>/<version>/<path>``. Everything else is
    ``<url>/<path>``. ``path`` is percent-encoded (``upstream_path``). A deployment that is
    not one plain segment raises ``UnsafePath``.
    """
    encoded = path
    if upstream.kind == "gemini":
        return Target(f"{upstream.url}/{version}/{encoded}", {})
    if upstream.kind == "azure" and upstream.api_version is not None:
        query = {"api-version": upstream.api_version}
        if model is None:
            return Target(f"{upstream.url}/openai/{encoded}", query)
        deployment = upstream.deployments.get(model, model)
        if "/" in deployment or _UNSAFE.search(deployment) is not None:
            raise UnsafePath(
                f"model {model!r} cannot name an Azure deployment: one URL segment without "
                "'/', '\\', '?', '#', '%', control characters or dot segments",
                param="model",
            )
        segment = quote(deployment, safe=_PATH_SAFE)
        return Target(f"{upstream.url}/openai/deployments/{segment}/{encoded}", query)
    return Target(f"{upstream.url}/{encoded}", {})


def headers_carry_key(upstream: UpstreamSettings) -> bool:
    """Whether the route's extra ``headers`` hold a credential of its own (a key header)."""
    return any(name.lower() in CREDENTIAL_HEADERS for name in upstream.headers)


def credential_headers(
    upstream: UpstreamSettings, client_headers: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The key header the upstream expects: its configured key, or the client's own.

    None at all when the route's ``headers`` hold a credential (they are added after).

    The openai SDK always sends ``Authorization: Bearer``; Azure wants ``api-key``,
    Anthropic ``x-api-key`` and Gemini ``x-goog-api-key``, so a client's bearer key is moved
    to the header the kind expects; an Azure client's ``api-key`` becomes a bearer key for
    the others.
    """
    if headers_carry_key(upstream):
        return []  # the route's own headers carry its key; the client's never go with it
    sent = {name: value for name, value in client_headers if name in CREDENTIAL_HEADERS}
    header = _KEY_HEADERS.get(upstream.kind)
    if header is None:
        if upstream.api_key is not None:
            return [("authorization", f"Bearer {upstream.api_key}")]
        if "authorization" not in sent and "api-key" in sent:
            # An Azure client's key, for an upstream that takes bearer keys.
            sent["authorization"] = f"Bearer {sent.pop('api-key')}"
        return list(sent.items())
    if upstream.api_key is not None:
        return [(header, upstream.api_key)]
    if header in sent:
        return [(header, sent[header])]
    scheme, _, token = sent.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token and not token.startswith(_OAUTH_TOKENS):
        return [(header, token)]
    return list(sent.items())
