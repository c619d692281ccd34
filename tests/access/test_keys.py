"""Virtual keys and the gate, without a server: format, hashing, headers, cache, checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.access.gate import PASS_THROUGH, Gate
from proxy.access.keys import (
    KEY_PREFIX,
    VirtualKey,
    hash_key,
    is_virtual,
    new_key,
    presented_key,
)
from proxy.config import UpstreamSettings
from proxy.errors import InvalidApiKey, MissingUpstreamKey, ModelNotAllowed

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
WITH_KEY = UpstreamSettings(name="main", api_key="sk-upstream")
WITHOUT_KEY = UpstreamSettings(name="local")


def _key(**fields: object) -> VirtualKey:
    values: dict[str, object] = {
        "id": "k1",
        "name": "app",
        "user_id": None,
        "models": (),
        "expires_at": None,
        "revoked_at": None,
    }
    values.update(fields)
    return VirtualKey(**values)  # type: ignore[arg-type]


def test_new_key_is_prefixed_random_and_only_its_hash_is_kept() -> None:
    first, second = new_key(), new_key()
    assert first.secret.startswith(KEY_PREFIX) and len(first.secret) == 46
    assert first.secret != second.secret and first.id != second.id
    assert first.hash == hash_key(first.secret) and len(first.hash) == 64
    assert first.secret not in first.hash
    assert first.display == first.secret[:10]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("authorization", "Bearer tp-abc")], "tp-abc"),
        ([("authorization", "bearer  tp-abc ")], "tp-abc"),
        ([("api-key", "tp-abc")], "tp-abc"),
        ([("x-api-key", "tp-abc")], "tp-abc"),
        ([("authorization", "Bearer sk-provider")], None),
        ([("authorization", "Basic tp-abc")], None),
        ([("x-other", "tp-abc")], None),
        ([], None),
    ],
)
def test_presented_key(headers: list[tuple[str, str]], expected: str | None) -> None:
    assert presented_key(headers) == expected


def test_is_virtual() -> None:
    assert is_virtual("tp-x") and not is_virtual("sk-x")


@pytest.mark.parametrize(
    ("models", "model", "allowed"),
    [
        ((), "gpt-4o", True),
        (("gpt-4o",), "gpt-4o", True),
        (("gpt-4o",), "gpt-4o-mini", False),
        (("gpt-4o*",), "gpt-4o-mini", True),
        (("claude-*",), None, True),
    ],
)
def test_allowed_models(models: tuple[str, ...], model: str | None, allowed: bool) -> None:
    assert _key(models=models).allows(model) is allowed


def test_revoked_and_expired_keys_are_unusable() -> None:
    assert _key().usable_at(NOW)
    assert not _key(revoked_at=NOW).usable_at(NOW)
    assert not _key(expires_at=NOW).usable_at(NOW)
    assert _key(expires_at=NOW + timedelta(seconds=1)).usable_at(NOW)


class FakeStore:
    def __init__(self) -> None:
        self.keys: dict[str, VirtualKey] = {}
        self.lookups = 0

    async def find(self, key_hash: str) -> VirtualKey | None:
        self.lookups += 1
        return self.keys.get(key_hash)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _gate(store: FakeStore, clock: Clock, **options: object) -> Gate:
    return Gate(store, cache_seconds=5.0, clock=clock, **options)  # type: ignore[arg-type]


async def test_without_a_virtual_key_the_gate_does_not_look_anything_up() -> None:
    store = FakeStore()
    gate = _gate(store, Clock())
    headers = [("authorization", "Bearer sk-provider")]
    assert await gate.admit(headers, "gpt-4o", WITHOUT_KEY) is PASS_THROUGH
    assert store.lookups == 0


async def test_required_keys_refuse_provider_keys() -> None:
    gate = _gate(FakeStore(), Clock(), require_virtual_keys=True)
    with pytest.raises(InvalidApiKey, match="provider key given"):
        await gate.admit([("authorization", "Bearer sk-provider")], "gpt-4o", WITH_KEY)
    with pytest.raises(InvalidApiKey, match="none given"):
        await gate.admit([], "gpt-4o", WITH_KEY)


async def test_gate_checks_key_model_and_upstream_key() -> None:
    store, clock = FakeStore(), Clock()
    store.keys[hash_key("tp-good")] = _key(models=("gpt-4o",))
    gate = _gate(store, clock)
    admitted = await gate.admit([("authorization", "Bearer tp-good")], "gpt-4o", WITH_KEY)
    assert admitted.key is not None and admitted.key.id == "k1"
    with pytest.raises(InvalidApiKey):
        await gate.admit([("authorization", "Bearer tp-unknown")], "gpt-4o", WITH_KEY)
    with pytest.raises(ModelNotAllowed):
        await gate.admit([("authorization", "Bearer tp-good")], "o3", WITH_KEY)
    with pytest.raises(MissingUpstreamKey, match="'local'"):
        await gate.admit([("authorization", "Bearer tp-good")], "gpt-4o", WITHOUT_KEY)


async def test_lookups_are_cached_for_a_while_and_forgotten_on_revocation() -> None:
    store, clock = FakeStore(), Clock()
    store.keys[hash_key("tp-good")] = _key()
    gate = _gate(store, clock)
    for _ in range(3):
        assert await gate.key("tp-good") is not None
    assert store.lookups == 1
    # Revoked elsewhere: this replica notices once its cached lookup is older than the TTL.
    store.keys[hash_key("tp-good")] = _key(revoked_at=NOW)
    assert await gate.key("tp-good") is not None
    clock.now = 5.01
    assert await gate.key("tp-good") is None
    assert store.lookups == 2
    # Revoked here: forgotten at once.
    store.keys[hash_key("tp-other")] = _key(id="k2")
    assert await gate.key("tp-other") is not None
    store.keys[hash_key("tp-other")] = _key(id="k2", revoked_at=NOW)
    gate.forget("k2")
    assert await gate.key("tp-other") is None
