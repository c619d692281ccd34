from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from proxy.api.serialize import (
    RECORD_FIELDS,
    iso_utc,
    money,
    record_json,
    session_json,
    summary_row_json,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        (Decimal("0"), "0"),
        (Decimal("0E-12"), "0"),
        (Decimal("-0.000"), "0"),
        (Decimal("0.000002500000"), "0.0000025"),
        (Decimal("2.5E-7"), "0.00000025"),
        (Decimal("1E+3"), "1000"),
        (Decimal("12.340000000000"), "12.34"),
        (Decimal("0.000000000001"), "0.000000000001"),
        (Decimal("123456789012345678.123456789012"), "123456789012345678.123456789012"),
    ],
)
def test_money_is_a_plain_decimal_string(value: Decimal | None, text: str | None) -> None:
    assert money(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        (datetime(2025, 1, 31, 12, 0, tzinfo=UTC), "2025-01-31T12:00:00Z"),
        (datetime(2025, 1, 31, 12, 0, 0, 5, tzinfo=UTC), "2025-01-31T12:00:00.000005Z"),
        (datetime(2025, 1, 31, 1, 0, tzinfo=timezone(timedelta(hours=2))), "2025-01-30T23:00:00Z"),
        (datetime(2025, 1, 31, 12, 0), "2025-01-31T12:00:00Z"),  # naive is UTC
    ],
)
def test_times_are_utc_with_z(value: datetime | None, text: str | None) -> None:
    assert iso_utc(value) == text


def test_every_contract_field_is_present_even_when_missing() -> None:
    assert list(record_json({"id": "x"})) == list(RECORD_FIELDS)
    assert record_json({"id": "x"})["cost_usd"] is None
    session = session_json(
        {"session_id": "s", "models": {"m": {"requests": 1, "total_tokens": 2, "cost_usd": None}}}
    )
    assert session["models"] == {"m": {"requests": 1, "total_tokens": 2, "cost_usd": None}}
    assert session["last_request_at"] is None
    row = summary_row_json({"key": None, "cost_usd": Decimal("1.50")})
    assert (row["key"], row["cost_usd"], row["requests"]) == (None, "1.5", None)
