"""Incremental splitting of a streamed JSON array into its elements, over raw bytes.

Gemini's ``streamGenerateContent`` without ``alt=sse`` answers one JSON array that grows as
the model writes: ``[{...}\\r\\n,\\r\\n{...}]``. The bytes go to the client untouched; this
finds where each element (a ``GenerateContentResponse`` object) ends, whatever the network's
chunk boundaries, so the usage accumulator can read it.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.sse import json_object

# Outside strings only brackets and quotes matter; inside, only the closing quote and escapes.
_STRUCTURE = re.compile(rb'["{}\[\]]')
_IN_STRING = re.compile(rb'["\\]')


class JsonArraySplitter:
    """Split the bytes of a JSON array into the bytes of its object elements, as they arrive.

    ``feed`` returns each completed top-level object, exactly as received. Whatever lies
    between elements (commas, whitespace, the brackets) is skipped; an element still
    incomplete is ``remainder()``. Only the element being read is held in memory.
    """

    __slots__ = ("_buffer", "_depth", "_in_string", "_position", "_start")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._depth = 0
        self._in_string = False
        self._start: int | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk`` and return the elements it completed, oldest first."""
        buffer = self._buffer
        buffer += chunk
        elements: list[bytes] = []
        position, depth, in_string, start = (
            self._position,
            self._depth,
            self._in_string,
            self._start,
        )
        while True:
            if in_string:
                found = _IN_STRING.search(buffer, position)
                if found is None:
                    position = len(buffer)
                    break
                if found[0] == b"\\":
                    if found.end() >= len(buffer):
                        position = found.start()  # the escaped byte is still to come
                        break
                    position = found.end() + 1
                    continue
                in_string = False
                position = found.end()
                continue
            found = _STRUCTURE.search(buffer, position)
            if found is None:
                position = len(buffer)
                break
            position = found.end()
            char = found[0]
            if char == b'"':
                in_string = True
            elif char in b"{[":
                depth += 1
                if depth == 2 and char == b"{":
                    start = found.start()
            else:
                depth -= 1
                if depth == 1 and start is not None:
                    elements.append(bytes(buffer[start:position]))
                    start = None
        keep_from = position if start is None else start
        del buffer[:keep_from]
        self._position = position - keep_from
        self._start = None if start is None else 0
        self._depth, self._in_string = depth, in_string
        return elements

    def remainder(self) -> bytes:
        """The bytes of an element not yet complete (empty between elements)."""
        return bytes(self._buffer) if self._start is not None else b""


def element_json(raw: bytes) -> tuple[str | None, dict[str, Any] | None, bool]:
    """One array element as the tee reads an SSE event: no event type, its JSON object,
    never ``[DONE]``."""
    return None, json_object(raw), False
