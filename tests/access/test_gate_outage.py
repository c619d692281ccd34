"""The gate while the database is away: last known key state within the tolerance, else 503."""

from __future__ import annotations

import asyncio

import pytest

from proxy.access.gate import Gate
from proxy.access.keys import VirtualKey, hash_key
from proxy.config import UpstreamSettings
from proxy.errors import DatabaseUnavailable, InvalidApiKey

UPSTREAM = UpstreamSettings(api_key="sk-upstream")
GOOD = VirtualKey("k1", "app", None, (), None, None)


class FlakyStore:
    """A key store whose database can be switched off."""

    def __init__(self) -> None:
        self.keys = {hash_key("tp-good"): GOOD}
        self.down = False

    async def find(self, key_hash: str) -> VirtualKey | None:
        if self.down:
            raise ConnectionRefusedError(111, "Connect call failed")
        return self.keys.get(key_hash)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def auth(secret: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {secret}")]


async def test_a_known_key_keeps_its_state_for_the_tolerance_then_gets_503() -> None:
    store, clock = FlakyStore(), Clock()
    gate = Gate(store, cache_seconds=1.0, outage_tolerance=60.0, clock=clock)  # type: ignore[arg-type]
    assert (await gate.admit(auth("tp-good"), "m", UPSTREAM)).key == GOOD
    with pytest.raises(InvalidApiKey):
        await gate.admit(auth("tp-bad"), "m", UPSTREAM)
    store.down = True
    clock.now = 30.0  # the cache expired; the database is asked and fails
    assert (await gate.admit(auth("tp-good"), "m", UPSTREAM)).key == GOOD
    with pytest.raises(InvalidApiKey):  # known bad stays bad
        await gate.admit(auth("tp-bad"), "m", UPSTREAM)
    with pytest.raises(DatabaseUnavailable) as unknown:
        await gate.admit(auth("tp-never-seen"), "m", UPSTREAM)
    assert (unknown.value.status_code, unknown.value.code) == (503, "database_unavailable")
    clock.now = 61.0  # past the tolerance since the last successful lookup
    with pytest.raises(DatabaseUnavailable):
        await gate.admit(auth("tp-good"), "m", UPSTREAM)
    store.down = False
    assert (await gate.admit(auth("tp-good"), "m", UPSTREAM)).key == GOOD


class SilentStore(FlakyStore):
    """A database that stops answering (a cut network) instead of refusing."""

    async def find(self, key_hash: str) -> VirtualKey | None:
        if self.down:
            await asyncio.Event().wait()
        return await super().find(key_hash)


async def test_a_database_that_does_not_answer_counts_as_unavailable_after_the_timeout() -> None:
    store, clock = SilentStore(), Clock()
    gate = Gate(store, cache_seconds=1.0, lookup_timeout=0.05, clock=clock)  # type: ignore[arg-type]
    assert (await gate.admit(auth("tp-good"), "m", UPSTREAM)).key == GOOD
    store.down = True
    clock.now = 2.0
    assert (await gate.admit(auth("tp-good"), "m", UPSTREAM)).key == GOOD
    with pytest.raises(DatabaseUnavailable):
        await gate.admit(auth("tp-never-seen"), "m", UPSTREAM)
