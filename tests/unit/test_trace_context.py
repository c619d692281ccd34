"""``traceparent`` values from the W3C Trace Context recommendation (level 1, section 3.2)."""

import pytest

from proxy.trace_context import TraceParent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", TraceParent(TRACE, SPAN)),  # sampled
        (f"00-{TRACE}-{SPAN}-00", TraceParent(TRACE, SPAN)),  # not sampled: still the trace
        (f" 00-{TRACE}-{SPAN}-01 ", TraceParent(TRACE, SPAN)),  # optional whitespace
        # A later version may append fields; a receiver reads the first four.
        (f"cc-{TRACE}-{SPAN}-01-what-the-future-holds", TraceParent(TRACE, SPAN)),
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-{SPAN}-01", None),  # version ff is forbidden
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id is invalid
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id is invalid
        (f"00-{TRACE.upper()}-{SPAN}-01", None),  # lower-case hex only
        (f"00-{TRACE[:-1]}-{SPAN}-01", None),
        (f"00-{TRACE}-{SPAN}", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(value: str | None, expected: TraceParent | None) -> None:
    assert parse_traceparent(value) == expected
