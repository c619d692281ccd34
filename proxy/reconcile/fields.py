"""Reading fields of a report page, with a ``PageShapeError`` that says which is wrong."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.reconcile.reports import PageShapeError


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PageShapeError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def items(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PageShapeError(f"{where}: expected an array, got {type(value).__name__}")
    return value


def count(node: dict[str, Any], name: str, where: str, *, default: int | None = None) -> int:
    """A token or request count: a non-negative integer (absent or null: ``default``)."""
    value = node.get(name)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PageShapeError(f"{where}.{name}: expected a count, got {value!r}")
    return value


def text(node: dict[str, Any], name: str, where: str) -> str | None:
    value = node.get(name)
    if value is not None and not isinstance(value, str):
        raise PageShapeError(f"{where}.{name}: expected a string or null, got {value!r}")
    return value


def unix_time(node: dict[str, Any], name: str, where: str) -> datetime:
    value = node.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PageShapeError(f"{where}.{name}: expected Unix seconds, got {value!r}")
    return datetime.fromtimestamp(value, UTC)


def rfc3339(node: dict[str, Any], name: str, where: str) -> datetime:
    value = node.get(name)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise PageShapeError(f"{where}.{name}: expected an RFC 3339 time, got {value!r}") from None
    if not isinstance(value, str) or parsed.tzinfo is None:
        raise PageShapeError(f"{where}.{name}: expected an RFC 3339 time, got {value!r}")
    return parsed.astimezone(UTC)


def decimal(value: Any, where: str) -> Decimal:
    """A number or decimal string, exactly: a float goes through its shortest repr."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PageShapeError(f"{where}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise PageShapeError(f"{where}: expected a number, got {value!r}") from None
    if not number.is_finite():
        raise PageShapeError(f"{where}: expected a finite number, got {value!r}")
    return number


def next_cursor(page: dict[str, Any], where: str) -> str | None:
    """The next page's cursor when ``has_more`` says there is one."""
    has_more = page.get("has_more")
    if not isinstance(has_more, bool):
        raise PageShapeError(f"{where}.has_more: expected true or false, got {has_more!r}")
    cursor = page.get("next_page")
    if has_more and (not isinstance(cursor, str) or not cursor):
        raise PageShapeError(f"{where}.next_page: has_more is true but no cursor is given")
    return cursor if has_more else None
