"""Build ``RequestRecord`` values for store and API tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from proxy.records import RequestRecord
from proxy.usage import Usage

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
DEFAULT_USAGE = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, cached_tokens=2)
_counter = itertools.count()


def record_id(created_at: datetime) -> str:
    """A record id in the format of ``new_record_id`` for a given time, unique per call."""
    millis = int(created_at.timestamp() * 1000)
    return f"{millis:012x}{next(_counter):020x}"


def make_record(
    *, minutes: float = 0, created_at: datetime | None = None, **fields: Any
) -> RequestRecord:
    """A plausible chat completion record, ``minutes`` after ``T0``; ``fields`` override."""
    at = created_at or T0 + timedelta(minutes=minutes)
    values: dict[str, Any] = {
        "id": record_id(at),
        "created_at": at,
        "endpoint": "/v1/chat/completions",
        "method": "POST",
        "status_code": 200,
        "stream": False,
        "model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "upstream": "https://api.openai.com/v1",
        "session_id": "s1",
        "user_id": "u1",
        "properties": {},
        "usage": DEFAULT_USAGE,
        "usage_source": "provider",
        "cost_usd": Decimal("0.0000025"),
        "latency_ms": 123.5,
        "ttft_ms": None,
        "error": None,
    }
    values.update(fields)
    return RequestRecord(**values)


def identity(records: list[RequestRecord]) -> list[RequestRecord]:
    """A writer's ``prepare`` for tests that submit finished records."""
    return list(records)
