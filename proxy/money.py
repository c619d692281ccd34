"""Money on the wire: exact decimal strings."""

from __future__ import annotations

from decimal import Decimal


def format_usd(amount: Decimal) -> str:
    """``Decimal("0.000002500000")`` -> ``"0.0000025"``: plain digits, never an exponent.

    Not ``Decimal.normalize()``: it rounds to the context precision (28 digits), and
    NUMERIC(30,12) holds 30.
    """
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
