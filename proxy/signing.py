"""Webhook signatures: HMAC-SHA256 of the body with a shared secret.

Budget alerts, anomalies and the daily digest sign their bodies the same way, so a receiver
checks every tallyproxy webhook with one function.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "x-tally-signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the HMAC-SHA256 of the body, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
