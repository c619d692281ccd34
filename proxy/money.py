"""Money on the wire: exact decimal strings."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal

EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN)
"""Decimal arithmetic on money: wide enough that NUMERIC(30, 12) values never round."""


def format_usd(amount: Decimal) -> str:
    """``Decimal("0.000002500000")`` -> ``"0.0000025"``: plain digits, never an exponent.

    Not ``Decimal.normalize()``: it rounds to the context precision (28 digits), and
    NUMERIC(30,12) holds 30.
    """
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def money(value: Decimal | None) -> str | None:
    """Money as a decimal string; None stays None."""
    return None if value is None else format_usd(value)
