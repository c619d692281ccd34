"""Pure parsing of the metering tags a client attaches to a request.

Header values arrive as ASGI gives them: each raw byte as one latin-1 character. Tags are
UTF-8 text, so their bytes are decoded as UTF-8 here (invalid UTF-8 is a 400 naming the
header). ``checked_id`` is the one rule for session ids and user ids, wherever they come
from: 1-256 printable characters (any script; control characters refused).
"""

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
_JOINERS = frozenset("\u200c\u200d")


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
    """Read session, user and properties from lower-case ASGI header pairs and the JSON body.

    ``X-*`` headers win over their ``Helicone-*`` aliases; the body's ``user`` field is the
    fallback for the user id.
    """
    session_id: str | None = None
    user_id: str | None = None
    properties: dict[str, str] = {}
    for name, value in headers:
        if name in _SESSION_HEADERS:
            if session_id is None or name == _SESSION_HEADERS[0]:
                session_id = checked_id(name, header_text(name, value))
        elif name in _USER_HEADERS:
            if user_id is None or name == _USER_HEADERS[0]:
                user_id = checked_id(name, header_text(name, value))
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


def header_text(header: str, value: str) -> str:
    """The text of a header value given as ASGI does (latin-1), its bytes read as UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:
        # Not from the wire (ASGI never gives characters above U+00FF): already text.
        return value
    except UnicodeDecodeError:
        raise TagError(header, "is not valid UTF-8") from None


def checked_id(header: str, value: str) -> str:
    """A session or user id by the one rule: 1-256 printable characters once stripped.

    Raises ``TagError`` naming ``header`` (a header name, or the parameter it came in).
    """
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
    value = header_text(header, value).strip()
    if len(value) > MAX_PROPERTY_VALUE:
        raise TagError(header, f"value must be at most {MAX_PROPERTY_VALUE} characters")
    if not _printable(value):
        raise TagError(header, "value must contain printable characters only")
    return key, value


def _printable(value: str) -> bool:
    # str.isprintable refuses control, format and separator characters; the zero-width
    # (non-)joiners are format characters that emoji sequences and some scripts need.
    return value.isprintable() or all(c.isprintable() or c in _JOINERS for c in value)
