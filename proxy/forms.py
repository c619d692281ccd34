"""Pure reading of a few named fields of a form body: ``multipart/form-data`` or urlencoded.

Uploads (audio transcriptions, image edits) name their ``model`` as a form field. The proxy
only needs that field, so this reads no more than the part headers, and it is strict: a body
that does not parse as the form it claims to be, or a field whose value another parser could
read differently (a transfer encoding, a foreign charset), gives ``None`` ("cannot be
known") rather than a guess. Whoever checks a model refuses what cannot be known.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import parse_qsl, unquote

MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
FORM_TYPES = frozenset({MULTIPART, URLENCODED})

Fields = dict[str, list[str]]
_PLAIN_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
_PLAIN_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})


def media_type(content_type: str) -> str:
    """``multipart/form-data; boundary=x`` -> ``multipart/form-data``."""
    return content_type.partition(";")[0].strip().lower()


def form_fields(body: bytes, content_type: str, names: Collection[str]) -> Fields | None:
    """The values of the fields ``names`` (each as often as it occurs), or None if unreadable.

    ``content_type`` must be one of ``FORM_TYPES``.
    """
    if media_type(content_type) == URLENCODED:
        return _urlencoded(body, names)
    boundary = _parameters(content_type).get("boundary")
    if not boundary or len(boundary) > 70:
        return None
    return _multipart(body, boundary.encode("latin-1"), names)


def _urlencoded(body: bytes, names: Collection[str]) -> Fields | None:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    found: Fields = {}
    for name, value in pairs:
        if name in names:
            found.setdefault(name, []).append(value)
    return found


def _multipart(body: bytes, boundary: bytes, names: Collection[str]) -> Fields | None:
    delimiter = b"--" + boundary
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2 : start] != b"\r\n"):
        return None
    chunks = body[start + len(delimiter) :].split(b"\r\n" + delimiter)
    if not chunks[-1].startswith(b"--"):
        return None  # no closing delimiter: cut short, or not multipart at all
    found: Fields = {}
    for chunk in chunks[:-1]:
        part = _part(chunk)
        if part is None:
            return None
        name, headers, value = part
        if name not in names:
            continue
        text = _field_text(headers, value)
        if text is None:
            return None
        found.setdefault(name, []).append(text)
    return found


def _part(chunk: bytes) -> tuple[str, dict[str, str], bytes] | None:
    """(field name, headers, value) of one part, or None when it is malformed."""
    line_end = chunk.find(b"\r\n")
    if line_end < 0 or chunk[:line_end].strip(b" \t"):
        return None  # only transport padding may follow a delimiter on its line
    head, separator, value = chunk[line_end + 2 :].partition(b"\r\n\r\n")
    if not separator:
        if not chunk[line_end + 2 :].startswith(b"\r\n"):
            return None
        head, value = b"", chunk[line_end + 4 :]
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n") if head else ():
        name, colon, text = line.partition(b":")
        if not colon or name != name.strip() or name.lower().decode("latin-1") in headers:
            return None
        headers[name.lower().decode("latin-1")] = text.strip().decode("latin-1")
    disposition = headers.get("content-disposition", "")
    kind, _, _ = disposition.partition(";")
    params = _parameters(disposition)
    if kind.strip().lower() != "form-data" or params.get("name") is None:
        return None
    return params["name"], headers, value


def _field_text(headers: dict[str, str], value: bytes) -> str | None:
    """A field's value as text, unless a parser might decode it otherwise."""
    encoding = headers.get("content-transfer-encoding", "binary").strip().lower()
    charset = _parameters(headers.get("content-type", "")).get("charset", "utf-8").lower()
    if encoding not in _PLAIN_ENCODINGS or charset not in _PLAIN_CHARSETS:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parameters(header: str) -> dict[str, str]:
    """The ``key=value`` parameters after the first ``;`` (names lower-cased, quotes removed).

    ``name*=`` (RFC 5987) is read as ``name``: a parser that honours it sees that name. A
    parameter given twice keeps neither, so an ambiguous part matches no field.
    """
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for item in _split_parameters(header)[1:]:
        key, equals, value = item.partition("=")
        key = key.strip().lower().removesuffix("*")
        if not equals or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif "''" in value:
            try:
                value = unquote(value.partition("''")[2], errors="strict")  # charset''value
            except UnicodeDecodeError:
                repeated.add(key)  # unreadable: the part then has no name, and no field
        if key in params:
            repeated.add(key)
        params[key] = value
    for key in repeated:
        params.pop(key)
    return params


def _split_parameters(header: str) -> list[str]:
    """Split on ``;`` outside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return items
