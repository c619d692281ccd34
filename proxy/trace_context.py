"""Pure reading of a W3C ``traceparent`` header (Trace Context, level 1).

The header is forwarded unchanged; its trace id and parent span id are kept on the record so
that the proxy's records join the caller's own traces. A malformed value is not an error:
the specification has receivers ignore it, and so does the proxy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRACEPARENT_HEADER = "traceparent"

# version "00" has exactly four fields; a later version may append more after a dash.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<span_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?"
)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: str
    span_id: str
    """The caller's span: the parent of the proxy's span for this request."""


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The trace and parent span ids of a ``traceparent`` value, or None if it is not valid."""
    if not value:
        return None
    matched = _TRACEPARENT.fullmatch(value.strip())
    if matched is None:
        return None
    version = matched["version"]
    if version == "ff" or (version == "00" and matched["rest"] is not None):
        return None
    trace_id, span_id = matched["trace_id"], matched["span_id"]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id=trace_id, span_id=span_id)
