import pytest

from proxy.tags import TagError, Tags, is_tag_header, parse_tags
from proxy.trace_context import TraceParent


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ([], None, Tags()),
        ([("x-session-id", "chat-42")], None, Tags(session_id="chat-42")),
        ([("helicone-session-id", "h-1")], None, Tags(session_id="h-1")),
        # The X- header wins over its Helicone alias, whatever the order.
        ([("x-session-id", "x"), ("helicone-session-id", "h")], None, Tags(session_id="x")),
        ([("helicone-session-id", "h"), ("x-session-id", "x")], None, Tags(session_id="x")),
        ([("x-user-id", "alice")], {"user": "bob"}, Tags(user_id="alice")),
        ([], {"user": "bob"}, Tags(user_id="bob")),
        ([], {"user": ""}, Tags()),
        ([], {"user": 17}, Tags()),
        ([("helicone-user-id", "carol")], None, Tags(user_id="carol")),
        (
            [("x-property-env", "prod"), ("helicone-property-feature", "search")],
            None,
            Tags(properties={"env": "prod", "feature": "search"}),
        ),
        ([("x-session-id", "  padded  ")], None, Tags(session_id="padded")),
        ([("x-session-id", "会话-1")], None, Tags(session_id="会话-1")),
        ([("x-property-empty", "")], None, Tags(properties={"empty": ""})),
        # Session paths (Helicone-Session-Path is the alias) and names.
        ([("x-session-path", "/plan/search/2")], None, Tags(session_path="/plan/search/2")),
        ([("helicone-session-path", "/abstract")], None, Tags(session_path="/abstract")),
        ([("x-session-path", "plan/search")], None, Tags(session_path="/plan/search")),
        ([("x-session-path", "/")], None, Tags(session_path="/")),
        ([("x-session-path", " /plan ")], None, Tags(session_path="/plan")),
        (
            [("helicone-session-path", "/h"), ("x-session-path", "/x")],
            None,
            Tags(session_path="/x"),
        ),
        ([("x-session-name", "Trip planner")], None, Tags(session_name="Trip planner")),
        ([("helicone-session-name", "Course")], None, Tags(session_name="Course")),
        # The W3C spec's own example; the header itself is forwarded (not a tag header).
        (
            [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
            None,
            Tags(trace=TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
        ),
        ([("traceparent", "not a traceparent")], None, Tags()),
    ],
)
def test_parse_tags(
    headers: list[tuple[str, str]], body: dict[str, object] | None, expected: Tags
) -> None:
    assert parse_tags(headers, body) == expected


@pytest.mark.parametrize(
    ("headers", "bad_header"),
    [
        ([("x-session-id", "")], "x-session-id"),
        ([("x-session-id", "s" * 257)], "x-session-id"),
        ([("x-session-id", "tab\there")], "x-session-id"),
        ([("x-user-id", "\x00")], "x-user-id"),
        ([("x-property-", "v")], "x-property-"),
        ([("x-property-" + "k" * 65, "v")], "x-property-" + "k" * 65),
        ([("x-property-big", "v" * 1025)], "x-property-big"),
        ([(f"x-property-p{i}", "v") for i in range(33)], "x-property-*"),
        ([("x-session-path", "")], "x-session-path"),
        ([("x-session-path", "/plan//search")], "x-session-path"),
        ([("x-session-path", "/plan/")], "x-session-path"),
        ([("x-session-path", "//")], "x-session-path"),
        ([("helicone-session-path", "/a\nb")], "helicone-session-path"),
        ([("x-session-path", "/" + "p" * 256)], "x-session-path"),
        ([("x-session-path", "p" * 256)], "x-session-path"),  # 257 with its leading /
        ([("x-session-name", "n" * 257)], "x-session-name"),
        ([("x-session-name", "\x1b[31m")], "x-session-name"),
    ],
)
def test_invalid_tags_name_the_header(headers: list[tuple[str, str]], bad_header: str) -> None:
    with pytest.raises(TagError) as caught:
        parse_tags(headers, None)
    assert caught.value.header == bad_header


def wire(text: str) -> str:
    """A header value as ASGI gives it: its UTF-8 bytes, each as one latin-1 character."""
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize(
    "session_id",
    ["ü-session", "セッション-1", "会话-1", "🚀-launch", "👨\u200d👩\u200d👧-family", "ok"],
)
def test_non_ascii_ids_in_utf8_headers_are_read_as_sent(session_id: str) -> None:
    headers = [("x-session-id", wire(session_id)), ("x-user-id", wire(session_id))]
    assert parse_tags(headers, None) == Tags(session_id=session_id, user_id=session_id)


def test_non_ascii_property_values_are_read_as_sent() -> None:
    assert parse_tags([("x-property-team", wire("équipe ü"))], None).properties == {
        "team": "équipe ü"
    }


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("x-session-id", b"\xfc-session"),  # latin-1, not UTF-8
        ("x-user-id", b"\xc3"),  # a cut UTF-8 sequence
        ("helicone-session-id", b"\xed\xa0\x80"),  # an encoded surrogate
        ("x-property-team", b"\xff"),
    ],
)
def test_invalid_utf8_is_refused_naming_the_header(name: str, raw: bytes) -> None:
    with pytest.raises(TagError, match="UTF-8") as caught:
        parse_tags([(name, raw.decode("latin-1"))], None)
    assert caught.value.header == name


@pytest.mark.parametrize(
    "value", ["a\u0085b", "a\u202eb", "a\u2028b", "a\x7fb", "\u200d" * 3 + "\x01"]
)
def test_control_and_separator_characters_are_refused_in_any_script(value: str) -> None:
    with pytest.raises(TagError, match="printable"):
        parse_tags([("x-session-id", wire(value))], None)


def test_256_characters_means_characters_not_bytes() -> None:
    assert parse_tags([("x-session-id", wire("ü" * 256))], None).session_id == "ü" * 256
    with pytest.raises(TagError, match="257"):
        parse_tags([("x-session-id", wire("ü" * 257))], None)


def test_session_id_of_exactly_256_characters_is_accepted() -> None:
    assert parse_tags([("x-session-id", "s" * 256)], None).session_id == "s" * 256


@pytest.mark.parametrize(
    ("name", "is_tag"),
    [
        ("x-session-id", True),
        ("helicone-user-id", True),
        ("x-property-team", True),
        ("helicone-property-team", True),
        ("x-session-path", True),
        ("helicone-session-path", True),
        ("x-session-name", True),
        ("helicone-session-name", True),
        ("traceparent", False),  # forwarded: the upstream may join the trace too
        ("tracestate", False),
        ("authorization", False),
        ("x-request-id", False),
        ("openai-organization", False),
    ],
)
def test_is_tag_header(name: str, is_tag: bool) -> None:
    assert is_tag_header(name) is is_tag
