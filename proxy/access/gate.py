"""The gate on ``/v1``: which virtual key a request came with, and whether it may pass.

Requests without a virtual key cost nothing here (a scan of the headers, no database call);
they are refused when the config requires keys, or when their upstream has a key of the
proxy's and ``access.allow_anonymous`` is off. Lookups are cached for
``key_cache_seconds``: a key revoked on another replica stops working here within that
time, and at once on this one (``forget``). While the database is unavailable a key looked
up within ``outage_tolerance`` seconds keeps its last known state; any other gets a 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.access.keys import VirtualKey, has_credentials, hash_key, presented_key
from proxy.access.mode import holds_provider_key
from proxy.config import UpstreamSettings
from proxy.errors import DatabaseUnavailable, InvalidApiKey, MissingUpstreamKey, ModelNotAllowed
from proxy.store.access import KeyStore
from proxy.store.availability import DATABASE_ERRORS, DECISION_TIMEOUT

log = logging.getLogger(__name__)

MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Admission:
    """What the gate learnt of a request it let through; ``key`` is None in pass-through."""

    key: VirtualKey | None = None


PASS_THROUGH = Admission()


class Gate:
    """Resolves virtual keys and checks them against the request."""

    def __init__(
        self,
        store: KeyStore | None,
        *,
        require_virtual_keys: bool = False,
        allow_anonymous: bool = False,
        cache_seconds: float = 5.0,
        outage_tolerance: float = 300.0,
        lookup_timeout: float = DECISION_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.require_virtual_keys = require_virtual_keys
        self.allow_anonymous = allow_anonymous
        self.cache_seconds = cache_seconds
        self._clock = clock
        self.outage_tolerance = outage_tolerance
        self.lookup_timeout = lookup_timeout
        # hash -> (key or None, cached until, looked up at)
        self._cache: dict[str, tuple[VirtualKey | None, float, float]] = {}
        self._failing = False
        self._keyed: dict[int, tuple[UpstreamSettings, bool]] = {}

    async def admit(
        self,
        headers: Iterable[tuple[str, str]],
        model: str | None,
        upstream: UpstreamSettings,
    ) -> Admission:
        """Let a request through, or raise the error that refuses it.

        401 for an unknown, revoked or expired key (or none, when keys are required or the
        upstream has a key of its own and anonymous access is not allowed), 403 for
        a model the key may not call, 500 when the upstream has no key of its own to use in
        place of the virtual one, 503 when the database is unavailable and the key was not
        looked up within the outage tolerance.
        """
        headers = list(headers)
        secret = presented_key(headers)
        if secret is None:
            # Without a virtual key, a keyed upstream would get the proxy's key for anyone.
            keyed = not self.allow_anonymous and self._holds_key(upstream)
            if self.require_virtual_keys or keyed:
                hint = "none given" if not has_credentials(headers) else "a provider key given"
                raise InvalidApiKey(
                    f"this proxy needs a tallyproxy key (tp-...) as the API key; {hint}"
                )
            return PASS_THROUGH
        key = await self.key(secret)
        if key is None:
            raise InvalidApiKey("invalid tallyproxy key: unknown, revoked or expired")
        if not key.allows(model):
            raise ModelNotAllowed(
                f"the key {key.name!r} may not call model {model!r}", param="model"
            )
        if not self._holds_key(upstream):
            raise MissingUpstreamKey(
                f"the upstream {upstream.name!r} has no api_key in the config, so a request "
                "with a tallyproxy key cannot be sent to it; set upstreams[].api_key_env"
            )
        return Admission(key)

    def _holds_key(self, upstream: UpstreamSettings) -> bool:
        """``holds_provider_key``, once per route: routes live as long as the app (the entry
        keeps its route, so an id is never taken for another's)."""
        known = self._keyed.get(id(upstream))
        if known is None or known[0] is not upstream:
            known = self._keyed[id(upstream)] = (upstream, holds_provider_key(upstream))
        return known[1]

    async def key(self, secret: str) -> VirtualKey | None:
        """The usable key for ``secret`` (cached), or None when unknown, revoked or expired."""
        digest = hash_key(secret)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            key = cached[0]
        else:
            key = await self._look_up(digest, cached, now)
        if key is None or not key.usable_at(datetime.now(UTC)):
            return None
        return key

    async def _look_up(
        self, digest: str, cached: tuple[VirtualKey | None, float, float] | None, now: float
    ) -> VirtualKey | None:
        if self.store is None:
            return None
        try:
            key = await asyncio.wait_for(self.store.find(digest), self.lookup_timeout)
        except DATABASE_ERRORS as exc:  # a timeout too
            # The database's boundary: decide from memory within the tolerance, else 503.
            if not self._failing:
                self._failing = True
                log.warning(
                    "virtual key lookups fail (%s: %s); keys looked up in the last %.0fs "
                    "keep their last known state, others get 503",
                    type(exc).__name__,
                    str(exc)[:200],
                    self.outage_tolerance,
                )
            if cached is not None and now - cached[2] <= self.outage_tolerance:
                return cached[0]
            raise DatabaseUnavailable(
                "the database is unavailable and this key has not been checked within "
                f"{self.outage_tolerance:.0f}s; try again shortly"
            ) from None
        self._failing = False
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()  # guessed keys must not grow the cache without bound
        self._cache[digest] = (key, now + self.cache_seconds, now)
        return key

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache, e.g. after revoking it on this replica."""
        stale = [h for h, (key, *_) in self._cache.items() if key is not None and key.id == key_id]
        for digest in stale:
            del self._cache[digest]
