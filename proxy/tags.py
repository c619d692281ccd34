"""Pure parsing of the metering tags a client attaches to a request.

Header values arrive as ASGI gives them: each raw byte as one latin-1 character. Tags are
UTF-8 text, so their bytes are decoded as UTF-8 here (invalid UTF-8 is a 400 naming the
header). ``checked_id`` is the one rule for session ids, user ids and session names,
wherever they come from: 1-256 printable characters (any script; control characters
refused). A session path is one more: ``/``-separated segments, none empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.trace_context import TRACEPARENT_HEADER, TraceParent, parse_traceparent

MAX_ID_LENGTH = 256
MAX_PROPERTY_NAME = 64
MAX_PROPERTY_VALUE = 1024
MAX_PROPERTIES = 32

_SESSION_HEADERS = ("x-session-id", "helicone-session-id")
_USER_HEADERS = ("x-user-id", "helicone-user-id")
_PATH_HEADERS = ("x-session-path", "helicone-session-path")
_NAME_HEADERS = ("x-session-name", "helicone-session-name")
_SINGLE_HEADERS = frozenset((*_SESSION_HEADERS, *_USER_HEADERS, *_PATH_HEADERS, *_NAME_HEADERS))
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
    session_path: str | None = None
    session_name: str | None = None
    trace: TraceParent | None = None


def is_tag_header(name: str) -> bool:
    """Whether a (lower-case) header belongs to tallyproxy and must not reach the upstream."""
    return name in _SINGLE_HEADERS or name.startswith(_PROPERTY_PREFIXES)


def parse_tags(headers: Iterable[tuple[str, str]], body: Mapping[str, Any] | None) -> Tags:
    """Read session, user and properties from lower-case ASGI header pairs and the JSON body.

    ``X-*`` headers win over their ``Helicone-*`` aliases; the body's ``user`` field is the
    fallback for the user id. A ``traceparent`` is read, not removed: it is forwarded.
    """
    single: dict[str, str] = {}
    properties: dict[str, str] = {}
    trace: TraceParent | None = None
    for name, value in headers:
        if name in _SINGLE_HEADERS:
            single[name] = value
        elif name.startswith(_PROPERTY_PREFIXES):
            key, checked = _checked_property(name, value)
            properties[key] = checked
        elif name == TRACEPARENT_HEADER:
            trace = parse_traceparent(value)
    if len(properties) > MAX_PROPERTIES:
        raise TagError("x-property-*", f"at most {MAX_PROPERTIES} properties per request")
    session_id = _first(single, _SESSION_HEADERS, checked_id)
    user_id = _first(single, _USER_HEADERS, checked_id)
    if user_id is None and body is not None:
        body_user = body.get("user")
        if isinstance(body_user, str) and body_user:
            user_id = body_user[:MAX_ID_LENGTH]
    return Tags(
        session_id=session_id,
        user_id=user_id,
        properties=properties,
        session_path=_first(single, _PATH_HEADERS, checked_path),
        session_name=_first(single, _NAME_HEADERS, checked_id),
        trace=trace,
    )


def _first(
    single: dict[str, str], names: tuple[str, str], check: Callable[[str, str], str]
) -> str | None:
    """The checked value of the ``X-*`` header, else of its alias, else None."""
    for name in names:
        if name in single:
            return check(name, header_text(name, single[name]))
    return None


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


def checked_path(header: str, value: str) -> str:
    """A session path: an id by the one rule, ``/``-separated, no empty segment.

    The leading ``/`` is added when missing (``plan/search`` is ``/plan/search``); ``/`` alone
    is the session's root.
    """
    value = checked_id(header, value)
    path = value if value.startswith("/") else "/" + value
    if path != "/" and "" in path[1:].split("/"):
        raise TagError(header, f"path {value!r} has an empty segment, e.g. /plan/search/2")
    if len(path) > MAX_ID_LENGTH:
        raise TagError(header, f"must be 1 to {MAX_ID_LENGTH} characters, got {len(path)}")
    return path


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
