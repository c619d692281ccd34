"""Virtual keys, pure: how a key looks, how it is made and how it is stored.

A key is ``tp-`` and 43 URL-safe characters (32 random bytes). Only its SHA-256 is stored:
the secret has 256 bits of entropy, so a plain hash is enough (a slow password hash buys
nothing against guessing and would cost every request). The first characters are kept for
display, so a listing shows which key is which without revealing it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from proxy.routing import CREDENTIAL_HEADERS

KEY_PREFIX = "tp-"
DISPLAY_CHARS = 10


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just issued: ``secret`` is shown once and never stored."""

    id: str
    secret: str
    hash: str
    display: str


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A stored key as the gate sees it."""

    id: str
    name: str
    user_id: str | None
    models: tuple[str, ...]
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def allows(self, model: str | None) -> bool:
        """Whether the key may call ``model``: no list allows all; names or globs otherwise.

        A request without a model (``GET /v1/models``) is allowed to every key.
        """
        if not self.models or model is None:
            return True
        return any(model == allowed or fnmatchcase(model, allowed) for allowed in self.models)


def new_key() -> NewKey:
    """A fresh key, its id, its hash and its display prefix."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(secrets.token_hex(8), secret, hash_key(secret), secret[:DISPLAY_CHARS])


def hash_key(secret: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def is_virtual(token: str) -> bool:
    """Whether a credential is a tallyproxy key rather than a provider's."""
    return token.startswith(KEY_PREFIX)


def presented_key(headers: Iterable[tuple[str, str]]) -> str | None:
    """The virtual key among the client's credential headers, or None.

    ``Authorization: Bearer tp-...`` (the openai SDK), ``api-key`` (Azure SDKs) or
    ``x-api-key`` (Anthropic SDKs). Headers are expected lower-cased, as ASGI gives them.
    """
    for name, value in headers:
        if name not in CREDENTIAL_HEADERS:
            continue
        if name == "authorization":
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                continue
        value = value.strip()
        if is_virtual(value):
            return value
    return None


def has_credentials(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether the client sent any key at all."""
    return any(name in CREDENTIAL_HEADERS for name, _ in headers)
