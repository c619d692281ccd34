"""Pure parsing of the metering tags a client attaches to a request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_ID_LENGTH = 256
MAX_PROPERTY_NAME = 64
MAX_PROPERTY_VALUE = 1024
MAX_PROPERTIES = 32

_SESSION_HEADERS = ("x-session-id", "helicone-session-id")
_USER_HEADERS = ("x-user-id", "helicone-user-id")
_PROPERTY_PREFIXES = ("x-property-", "helicone-property-")


class TagError(ValueError):
    """A tag header is present but unusable; ``header`` names it."""

    def __init__(self, header: str, problem: str) -> None:
        super().__init__(f"header {header}: {problem}")
        self.header = header


@dataclass(frozen=True, slots=True)
class Tags:
    session_id: str | None = None
    user_id: str | None = None
    properties: dict[str, str] = field(default_factory=dict)


def is_tag_header(name: str) -> bool:
    """Whether a (lower-case) header belongs to tallyproxy and must not reach the upstream."""
    return name in _SESSION_HEADERS or name in _USER_HEADERS or name.startswith(_PROPERTY_PREFIXES)


def parse_tags(headers: Iterable[tuple[str, str]], body: Mapping[str, Any] | None) -> Tags:
    """Read session, user and properties from lower-case header pairs and the JSON body.

    ``X-*`` headers win over their ``Helicone-*`` aliases; the body's ``user`` field is the
    fallback for the user id.
    """
    session_id: str | None = None
    user_id: str | None = None
    properties: dict[str, str] = {}
    for name, value in headers:
        if name in _SESSION_HEADERS:
            if session_id is None or name == _SESSION_HEADERS[0]:
                session_id = _checked_id(name, value)
        elif name in _USER_HEADERS:
            if user_id is None or name == _USER_HEADERS[0]:
                user_id = _checked_id(name, value)
        elif name.startswith(_PROPERTY_PREFIXES):
            key, checked = _checked_property(name, value)
            properties[key] = checked
    if len(properties) > MAX_PROPERTIES:
        raise TagError("x-property-*", f"at most {MAX_PROPERTIES} properties per request")
    if user_id is None and body is not None:
        body_user = body.get("user")
        if isinstance(body_user, str) and body_user:
            user_id = body_user[:MAX_ID_LENGTH]
    return Tags(session_id=session_id, user_id=user_id, properties=properties)


def _checked_id(header: str, value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise TagError(header, f"must be 1 to {MAX_ID_LENGTH} characters, got {len(value)}")
    if not _printable(value):
        raise TagError(header, "must contain printable characters only")
    return value


def _checked_property(header: str, value: str) -> tuple[str, str]:
    prefix = next(p for p in _PROPERTY_PREFIXES if header.startswith(p))
    key = header[len(prefix) :]
    if not 1 <= len(key) <= MAX_PROPERTY_NAME:
        raise TagError(header, f"property name must be 1 to {MAX_PROPERTY_NAME} characters")
    value = value.strip()
    if len(value) > MAX_PROPERTY_VALUE:
        raise TagError(header, f"value must be at most {MAX_PROPERTY_VALUE} characters")
    if not _printable(value):
        raise TagError(header, "value must contain printable characters only")
    return key, value


def _printable(value: str) -> bool:
    return value.isprintable()
