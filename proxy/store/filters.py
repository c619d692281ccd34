"""What a usage query may ask for (``UsageFilters``) and its SQL over raw ``requests`` rows:
the conditions, a property's value, a time bucket. Shared by the raw-row queries
(``proxy.store.queries``) and the rollup reads (``proxy.store.rollup_reads``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, true

from proxy.store.tables import requests

_PROPERTY_NAME = re.compile(r"[^\"\\\x00-\x20\x7f]{1,128}")


class InvalidQuery(ValueError):
    """A query parameter the store cannot use; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class UsageFilters:
    """Filters shared by the queries; ``since`` is inclusive, ``until`` exclusive."""

    session_id: str | None = None
    user_id: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    property_name: str | None = None
    """With ``property_value``: only requests whose ``properties[name]`` equals the value."""
    property_value: str | None = None
    key_id: str | None = None
    """Only requests made with this virtual key (a key reading its own usage)."""


def request_conditions(filters: UsageFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [true()]
    for column, value in (
        (requests.c.session_id, filters.session_id),
        (requests.c.user_id, filters.user_id),
        (requests.c.model, filters.model),
        (requests.c.key_id, filters.key_id),
    ):
        if value is not None:
            conditions.append(column == value)
    if filters.property_name is not None:
        conditions.append(property_condition(filters.property_name, filters.property_value))
    if filters.since is not None:
        conditions.append(requests.c.created_at >= filters.since)
    if filters.until is not None:
        conditions.append(requests.c.created_at < filters.until)
    return conditions


def property_text(name: str, param: str) -> ColumnElement[str]:
    """``properties[name]`` as text; names are stored lower-cased, so they match any case."""
    name = name.lower()
    if not _PROPERTY_NAME.fullmatch(name):
        raise InvalidQuery(
            f"invalid property name {name!r}: 1-128 printable characters, no quotes", param
        )
    value: ColumnElement[str] = requests.c.properties[name].as_string()
    return value


def property_condition(name: str, value: str | None) -> ColumnElement[bool]:
    if value is None:
        raise InvalidQuery(f"property {name!r} needs a value: use name:value", "property")
    return property_text(name, "property") == value


def time_bucket(
    dialect: str, unit: str, moment: ColumnElement[Any] = requests.c.created_at
) -> ColumnElement[Any]:
    """The UTC day (``2025-01-31``) or hour (``2025-01-31T13:00:00Z``) of ``moment``."""
    if dialect == "postgresql":
        pattern = "YYYY-MM-DD" if unit == "day" else 'YYYY-MM-DD"T"HH24:00:00"Z"'
        return func.to_char(func.timezone("UTC", moment), pattern)
    # SQLite: datetimes are stored as UTC text (see UTCDateTime).
    pattern = "%Y-%m-%d" if unit == "day" else "%Y-%m-%dT%H:00:00Z"
    return func.strftime(pattern, moment)


def failed() -> ColumnElement[bool]:
    """A failed request row, as ``proxy.records.is_failure`` tells it: an error status, or an
    error noted."""
    return (requests.c.status_code >= 400) | requests.c.error.is_not(None)
