import json

import pytest

from proxy.plan import (
    BodyError,
    RequestPlan,
    plan_request,
    readable_encodings,
    upstream_headers,
    with_stream_usage,
)

CHAT = "/v1/chat/completions"


def planned(endpoint: str, body: bytes, content_type: str, inject: bool) -> RequestPlan:
    plan = plan_request(endpoint, body, content_type)
    return with_stream_usage(plan, endpoint) if inject else plan


def test_non_stream_body_is_forwarded_byte_for_byte() -> None:
    body = b'{"model": "gpt-4o-mini",  "messages": [{"role": "user", "content": "hi"}]}'
    plan = planned(CHAT, body, "application/json", inject=True)
    assert plan.body is body
    assert (plan.model, plan.stream, plan.strip_usage_chunk) == ("gpt-4o-mini", False, False)


@pytest.mark.parametrize(
    ("request_body", "strip", "expected_options"),
    [
        ({"model": "m", "stream": True}, True, {"include_usage": True}),
        ({"model": "m", "stream": True, "stream_options": None}, True, {"include_usage": True}),
        (
            {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False}},
            True,
            {"include_obfuscation": False, "include_usage": True},
        ),
        (
            {"model": "m", "stream": True, "stream_options": {"include_usage": False}},
            True,
            {"include_usage": True},
        ),
        # The client asked for usage itself: it gets the usage chunk, nothing is stripped.
        (
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
            False,
            {"include_usage": True},
        ),
    ],
)
def test_stream_asks_for_usage(
    request_body: dict[str, object], strip: bool, expected_options: dict[str, object]
) -> None:
    plan = planned(CHAT, json.dumps(request_body).encode(), "application/json", True)
    assert plan.strip_usage_chunk is strip
    sent = json.loads(plan.body)
    assert sent["stream_options"] == expected_options
    assert {k: v for k, v in sent.items() if k != "stream_options"} == {
        k: v for k, v in request_body.items() if k != "stream_options"
    }


@pytest.mark.parametrize(
    ("endpoint", "inject"),
    [("/v1/responses", True), ("/v1/embeddings", True), (CHAT, False)],
)
def test_usage_is_not_injected_where_it_does_not_apply(endpoint: str, inject: bool) -> None:
    body = b'{"model": "m", "stream": true}'
    plan = planned(endpoint, body, "application/json", inject)
    assert plan.body == body and not plan.strip_usage_chunk and plan.stream


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"", "application/json"), (b"raw audio", "audio/wav"), (b"--b\r\n", "multipart/form-data")],
)
def test_bodies_that_are_not_json_pass_untouched(body: bytes, content_type: str) -> None:
    plan = planned(CHAT, body, content_type, True)
    assert plan.body == body and plan.json is None and plan.model is None


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe{}"])
def test_bad_json_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(BodyError):
        planned(CHAT, body, "application/json", True)


def test_upstream_headers_drop_tags_hop_by_hop_and_client_credentials() -> None:
    client = [
        ("host", "localhost:8080"),
        ("content-length", "10"),
        ("connection", "keep-alive"),
        ("authorization", "Bearer sk-client"),
        ("x-session-id", "s1"),
        ("helicone-property-env", "prod"),
        ("openai-organization", "org-1"),
        ("x-extra", "from-client"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
    ]
    credentials = [("authorization", "Bearer sk-client")]
    assert upstream_headers(client, credentials, {}, stream=False) == [
        ("openai-organization", "org-1"),
        ("x-extra", "from-client"),
        ("authorization", "Bearer sk-client"),
        ("accept-encoding", "gzip, deflate"),
    ]
    proxy_key = [("api-key", "azure-key")]
    assert upstream_headers(client, proxy_key, {"X-Extra": "configured"}, stream=True) == [
        ("openai-organization", "org-1"),
        ("api-key", "azure-key"),
        ("x-extra", "configured"),
        ("accept-encoding", "identity"),
    ]


@pytest.mark.parametrize(
    ("accepted", "sent"),
    [
        ("gzip", "gzip"),
        ("br, zstd", "identity"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("", "identity"),
    ],
)
def test_readable_encodings(accepted: str, sent: str) -> None:
    assert readable_encodings(accepted) == sent


CHAT_BODY = b'{"model": "gpt-4o", "stream": true, "messages": []}'
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=xyz"
UPLOAD = (
    b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n'
    b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--xyz--\r\n'
)

TWO_MODELS = UPLOAD.replace(
    b"--xyz--", b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o\r\n--xyz--'
)


@pytest.mark.parametrize(
    ("body", "content_type", "model", "stream", "known"),
    [
        # Read as the upstream reads it, whatever the declared type.
        (CHAT_BODY, "text/plain", "gpt-4o", True, True),
        (CHAT_BODY, "", "gpt-4o", True, True),
        (CHAT_BODY, "application/octet-stream", "gpt-4o", True, True),
        (CHAT_BODY, FORM, "gpt-4o", True, True),  # curl -d sends JSON as a form
        (CHAT_BODY, "Application/JSON; charset=utf-8", "gpt-4o", True, True),
        (UPLOAD, MULTIPART, "whisper-1", False, True),
        (b"model=tts-1&stream=true", FORM, "tts-1", True, True),
        (b'{"messages": []}', "text/plain", None, False, True),  # no model: known absent
        (b"", "text/plain", None, False, True),
        (b"  \n", "", None, False, True),
        # The model cannot be known.
        (b"model: gpt-4o", "text/plain", None, False, False),
        (b'["gpt-4o"]', "text/plain", None, False, False),
        (b'{"model": ["gpt-4o"]}', "application/json", None, False, False),
        (b'{"model": 4}', "text/plain", None, False, False),
        (UPLOAD.replace(b"--xyz--", b"--xy"), MULTIPART, None, False, False),
        (UPLOAD + UPLOAD.replace(b"whisper-1", b"gpt-4o"), MULTIPART, None, False, False),
        (TWO_MODELS, MULTIPART, None, False, False),
        (b"model=a&model=b", FORM, None, False, False),
        (b'{"a":"&model=gpt-4o-mini&","model":"gpt-4o"}', FORM, None, False, False),
    ],
)  # fmt: skip
def test_the_model_is_read_whatever_the_declared_type(
    body: bytes, content_type: str, model: str | None, stream: bool, known: bool
) -> None:
    plan = plan_request(CHAT, body, content_type)
    assert (plan.model, plan.stream, plan.model_known) == (model, stream, known)
    assert plan.body is body


def test_a_json_body_declared_otherwise_is_parsed_for_tags_and_stream_usage() -> None:
    plan = with_stream_usage(plan_request(CHAT, CHAT_BODY, "text/plain"), CHAT)
    assert plan.json is not None and plan.strip_usage_chunk
    assert json.loads(plan.body)["stream_options"] == {"include_usage": True}


def test_a_broken_body_not_declared_json_is_not_a_body_error() -> None:
    # The proxy does not answer for the upstream: without a model list or budget it passes.
    assert plan_request(CHAT, b"{not json", "text/plain").model_known is False
    with pytest.raises(BodyError):
        plan_request(CHAT, b"{not json", "application/json")
