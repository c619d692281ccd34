"""What every settings section shares: frozen, no unknown keys; and the webhook URL check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def webhook_url(value: str | None) -> str | None:
    """An http(s) URL, or None; anything else is refused."""
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value
