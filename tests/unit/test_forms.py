import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.forms import form_fields

NAMES = ("model", "stream")
B = "----tally42"
TYPE = f"multipart/form-data; boundary={B}"


def multipart(*parts: bytes, boundary: str = B, close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary.encode() + b"--\r\n" if close else b"")


def field(name: str, value: bytes, *extra: bytes) -> bytes:
    head = [f'Content-Disposition: form-data; name="{name}"'.encode(), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + value


AUDIO = (
    b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\nRIFF\x00\x01\r\n--not-the-boundary\r\n\xff\xfe"
)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (multipart(AUDIO, field("model", b"whisper-1")), TYPE, {"model": ["whisper-1"]}),
        (
            multipart(field("model", b"gpt-4o-transcribe"), field("stream", b"true"), AUDIO),
            TYPE,
            {"model": ["gpt-4o-transcribe"], "stream": ["true"]},
        ),
        (multipart(AUDIO), TYPE, {}),
        # Quoted boundary, preamble, unquoted and RFC 5987 names, any case of the header.
        (
            b"preamble\r\n" + multipart(b'content-disposition: Form-Data; name=model\r\n\r\nm1'),
            f'multipart/form-data; boundary="{B}"',
            {"model": ["m1"]},
        ),
        (
            multipart(b"Content-Disposition: form-data; name*=utf-8''mod%65l\r\n\r\nm2"),
            TYPE,
            {"model": ["m2"]},
        ),
        (
            multipart(field("model", b"m3", b"Content-Type: text/plain; charset=utf-8")),
            TYPE,
            {"model": ["m3"]},
        ),
        # Twice: both values, so the caller can see the ambiguity.
        (multipart(field("model", b"a"), field("model", b"b")), TYPE, {"model": ["a", "b"]}),
        # Unreadable: no boundary, no closing delimiter, a part without a disposition, a
        # model in a transfer encoding or a foreign charset, a name given twice, bad UTF-8.
        (multipart(field("model", b"m")), "multipart/form-data", None),
        (multipart(field("model", b"m"), close=False), TYPE, None),
        (multipart(b"Content-Type: text/plain\r\n\r\nm"), TYPE, None),
        (multipart(field("model", b"Z3B0LTRv", b"Content-Transfer-Encoding: base64")), TYPE, None),
        (multipart(field("model", b"m", b"Content-Type: text/plain; charset=utf-16")), TYPE, None),
        (
            multipart(b"Content-Disposition: form-data; name=model; name*=utf-8''x\r\n\r\nm"),
            TYPE,
            None,
        ),
        (multipart(field("model", b"\xff")), TYPE, None),
        (multipart(field("model", b"m")).replace(b"\r\n", b"\n"), TYPE, None),
        (b'{"model": "gpt-4o"}', TYPE, None),
        # urlencoded
        (b"model=gpt-4o-mini&stream=true", "application/x-www-form-urlencoded", {
            "model": ["gpt-4o-mini"], "stream": ["true"]}),
        (b"model=a&model=b", "application/x-www-form-urlencoded", {"model": ["a", "b"]}),
        (b"model=%FF", "application/x-www-form-urlencoded", None),
        (b'{"model": "gpt-4o"}', "application/x-www-form-urlencoded", {}),
    ],
)  # fmt: skip
def test_form_fields(body: bytes, content_type: str, expected: dict[str, list[str]] | None) -> None:
    assert form_fields(body, content_type, NAMES) == expected


def test_an_undecodable_extended_name_makes_the_body_unreadable() -> None:
    body = multipart(b"Content-Disposition: form-data; name*=utf-8''%FF\r\n\r\nm")
    assert form_fields(body, TYPE, NAMES) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [b"--" + B.encode(), b"\r\n", b"\r\n\r\n", b"--", b'name="model"', b"name*=",
                 b"Content-Disposition: form-data; ", b"Content-Transfer-Encoding: x", b";", b'"']
            ),
        ),
        max_size=30,
    ),
    st.sampled_from([TYPE, "application/x-www-form-urlencoded", "multipart/form-data; boundary=a"]),
)  # fmt: skip
def test_any_body_gives_fields_or_none_never_an_exception(
    pieces: list[bytes], content_type: str
) -> None:
    found = form_fields(b"".join(pieces), content_type, NAMES)
    assert found is None or set(found) <= set(NAMES)
