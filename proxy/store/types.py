"""Column types that behave the same on SQLite and Postgres: exact money and UTC datetimes
(and a server default written the same way on both)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from proxy.money import EXACT as EXACT  # where money arithmetic is defined

MONEY_SCALE = 12
"""Digits after the decimal point kept for USD amounts: 1 pico-dollar."""


_PICO = Decimal(10) ** MONEY_SCALE
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
_SQLITE_MAX = 2**63 - 1
MAX_BIGINT = 2**63 - 1
"""The largest value of a BIGINT column (token counts) on both databases."""


class Money(TypeDecorator[Decimal]):
    """An exact USD amount as ``Decimal``; never a float on the way in or out.

    Postgres stores ``NUMERIC(30, 12)``. SQLite has no exact decimal type (its NUMERIC is a
    float), so there the amount is stored as an integer count of pico-dollars (10^-12 USD) in
    a 64-bit INTEGER. Sums stay exact because ``SUM`` over integers is integer arithmetic,
    and ``SUM(money_column)`` keeps this type, so the result comes back as ``Decimal`` too.

    SQLite bound: a signed 64-bit integer holds 9,223,372 USD in pico-dollars. A single
    value, a session total or a ``SUM`` beyond that fails with "integer overflow" rather
    than losing precision; deployments that meter more than that per session or per summary
    should use Postgres, which has no such bound (30 digits, 18 before the point).

    Values are rounded half-even to 12 decimal places on the way in.
    """

    impl = Numeric(30, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(30, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money must be a Decimal, not {type(value).__name__}: {value!r}")
        exact = value.quantize(_QUANTUM, context=EXACT)
        if dialect.name == "sqlite":
            pico = int(EXACT.multiply(exact, _PICO))
            if abs(pico) > _SQLITE_MAX:
                raise ValueError(f"{value} USD is beyond what SQLite can store exactly")
            return pico
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-MONEY_SCALE, context=EXACT)
        return Decimal(value)

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal


def stored_money(value: Decimal | None) -> Decimal | None:
    """``value`` as a ``Money`` column stores it (12 places, half-even): what sums must add,
    so that totals kept beside the records equal the sums of the stored records."""
    return None if value is None else value.quantize(_QUANTUM, context=EXACT)


def max_money(dialect_name: str) -> Decimal:
    """The largest USD amount a ``Money`` column holds on this database (see ``Money``)."""
    if dialect_name == "sqlite":
        return Decimal(_SQLITE_MAX).scaleb(-MONEY_SCALE, context=EXACT)
    return EXACT.subtract(Decimal(10) ** (30 - MONEY_SCALE), _QUANTUM)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, always stored and returned in UTC.

    SQLite keeps datetimes as text without an offset, so values are converted to UTC before
    they are written: text comparison then equals time comparison, and ``strftime`` buckets
    are UTC buckets. Naive datetimes are taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        return datetime


class EmptyJsonObject(ColumnElement[Any]):
    """``'{}'`` as a JSON column's server default, written as each database reflects it
    (Postgres adds a cast): a schema compared with ``tables`` then shows no difference, where
    Postgres could not compare two JSON values to find them equal."""

    inherit_cache = True


@compiles(EmptyJsonObject)
def _empty_json_object(element: EmptyJsonObject, compiler: Any, **kw: Any) -> str:
    return "'{}'"


@compiles(EmptyJsonObject, "postgresql")
def _empty_json_object_postgres(element: EmptyJsonObject, compiler: Any, **kw: Any) -> str:
    return "'{}'::json"
