"""The connection bounds' arithmetic and bookkeeping (the protocol itself: tests/e2e)."""

from __future__ import annotations

import json
import pickle

from proxy.connections import (
    MAX_HEADER_BYTES,
    ConnectionGuard,
    ConnectionLimits,
    _Answer,
    _raw_response,
    client_connection_bound,
)
from proxy.errors import error_body
from proxy.fastpath import MAX_HEADER_BYTES as FAST_PATH_MAX_HEADER_BYTES


def test_clients_get_what_the_descriptor_limit_leaves_beside_the_upstream_pools() -> None:
    assert client_connection_bound(1024, 256) == 1024 - 256 - 64
    assert client_connection_bound(256, 512) == 16  # never none at all


def test_each_address_holds_at_most_its_bound_and_gets_it_back() -> None:
    guard = ConnectionGuard(ConnectionLimits(10, 100, max_per_client=2))
    assert [guard.admit("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert guard.admit("10.0.0.2")
    guard.release("10.0.0.1")
    assert guard.admit("10.0.0.1")
    for _ in range(2):
        guard.release("10.0.0.1")
    guard.release("10.0.0.2")
    assert guard.per_client == {}


def test_without_a_per_client_bound_nothing_is_counted() -> None:
    guard = ConnectionGuard(ConnectionLimits(10, 100, max_per_client=None))
    assert all(guard.admit("10.0.0.1") for _ in range(1000))
    assert guard.per_client == {}


def test_the_factory_survives_the_trip_to_a_worker_process() -> None:
    # `--workers` pickles uvicorn's config, `http=` factory included.
    factory = pickle.loads(
        pickle.dumps(ConnectionGuard(ConnectionLimits(5, 50, 3)).protocol_factory())
    )
    assert factory.keywords["guard"].limits == ConnectionLimits(5, 50, 3)


def test_answers_are_openai_errors_and_the_bounds_match_the_fast_path() -> None:
    raw = _raw_response(_Answer(431, "too many", "invalid_request_error", "x"), [])
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body) == error_body("too many", "invalid_request_error", code="x")
    assert MAX_HEADER_BYTES == FAST_PATH_MAX_HEADER_BYTES
