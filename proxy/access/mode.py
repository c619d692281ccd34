"""Which access mode a configuration runs in, decided once at start-up.

    local      loopback address, no provider key of the proxy's, no admin token: the
               README's first command. The usage and admin APIs are open to this machine;
               clients send their own provider keys.
    locked     an admin token guards /usage and /admin; a request routed to an upstream
               whose key the proxy holds needs a virtual key (tp-...).
    anonymous  ``access.allow_anonymous: true``: open on purpose, wherever it listens.

Listening beyond loopback or holding a provider key without an admin token (and without
``allow_anonymous``) is refused at start: the proxy would hand its key, or the power to mint
keys for it, to anyone who reaches the port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from proxy.config import ConfigError, Settings, UpstreamSettings
from proxy.routing import headers_carry_key

Mode = Literal["local", "locked", "anonymous"]


@dataclass(frozen=True, slots=True)
class AccessMode:
    """The mode and the one line start-up logs about it."""

    name: Mode
    description: str


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface): assume it is reachable


def holds_provider_key(upstream: UpstreamSettings) -> bool:
    """Whether the proxy sends a credential of its own to ``upstream``.

    ``api_key`` / ``api_key_env``, or a credential header among its extra ``headers``.
    """
    if upstream.api_key is not None or upstream.api_key_env is not None:
        return True
    return headers_carry_key(upstream)


def access_mode(settings: Settings) -> AccessMode:
    """The access mode of ``settings``; ``ConfigError`` when it would be open by accident."""
    keyed = [route.name for route in settings.routes if holds_provider_key(route)]
    host = settings.server.host
    if settings.access.allow_anonymous:
        return AccessMode("anonymous", _anonymous(settings, keyed))
    exposed = [f"it listens on {host!r}, beyond loopback"] if not is_loopback(host) else []
    if keyed:
        exposed.append(f"it holds a provider key for upstream(s) {', '.join(keyed)}")
    if settings.admin_token is None:
        if exposed:
            raise ConfigError(
                f"tallyproxy would be open to anyone: {' and '.join(exposed)}, and no admin "
                "token is set (anyone could read usage and mint keys at /admin). Set "
                "admin_token (TALLYPROXY_ADMIN_TOKEN), or access.allow_anonymous: true "
                "to run open on purpose"
            )
        return AccessMode(
            "local",
            f"access: local on {host}: /usage and /admin are open to this machine (no admin "
            "token); clients' own provider keys are passed through",
        )
    return AccessMode("locked", _locked(settings, keyed))


def _locked(settings: Settings, keyed: list[str]) -> str:
    parts = ["access: locked: /usage and /admin need the admin token"]
    if settings.access.require_virtual_keys:
        parts.append("every /v1 request needs a tallyproxy key")
    elif keyed:
        parts.append(f"requests to {', '.join(keyed)} need a tallyproxy key")
        if len(keyed) < len(settings.routes):
            parts.append("other upstreams get the client's own key")
    else:
        parts.append("clients' own provider keys are passed through")
    return "; ".join(parts)


def _anonymous(settings: Settings, keyed: list[str]) -> str:
    parts = ["access: anonymous (access.allow_anonymous: true)"]
    if keyed and not settings.access.require_virtual_keys:
        parts.append(
            f"requests without a tallyproxy key use the proxy's key for {', '.join(keyed)}"
        )
    if settings.admin_token is None:
        parts.append(f"/usage and /admin are open to anyone who reaches {settings.server.host}")
    return "; ".join(parts)
