import re
from urllib.parse import unquote

import pytest

from proxy.config import UpstreamSettings
from proxy.routing import (
    NoRoute,
    UnsafePath,
    check_path,
    choose_upstream,
    credential_headers,
    target,
    upstream_path,
)

OPENAI = UpstreamSettings(name="openai", models=("gpt-*", "o3*"))
DEEPSEEK = UpstreamSettings(
    name="deepseek", kind="openai-compatible", url="https://api.deepseek.com/v1",
    models=("deepseek-chat", "deepseek-reasoner"),
)  # fmt: skip
CLAUDE = UpstreamSettings(
    name="anthropic", kind="anthropic", url="https://api.anthropic.com/v1", models=("claude-*",)
)
LOCAL = UpstreamSettings(name="vllm", kind="openai-compatible", url="http://gpu-box:8000/v1")
EXACT_BEATS_GLOB = UpstreamSettings(name="special", models=("gpt-4o-special",))
GEMINI = UpstreamSettings(
    name="gemini", kind="gemini", url="https://generativelanguage.googleapis.com",
    models=("gemini-*",),
)  # fmt: skip
GEMINI_COMPAT = UpstreamSettings(
    name="gemini-openai", url="https://generativelanguage.googleapis.com/v1beta/openai"
)
AZURE = UpstreamSettings(
    name="azure", kind="azure", url="https://contoso.openai.azure.com",
    api_version="2024-10-21", deployments={"gpt-4o": "prod-4o"}, models=("azure-*", "gpt-4o"),
)  # fmt: skip


@pytest.mark.parametrize(
    ("routes", "model", "expected"),
    [
        ((OPENAI, DEEPSEEK, CLAUDE, LOCAL), "gpt-4o-mini", "openai"),
        ((OPENAI, DEEPSEEK, CLAUDE, LOCAL), "o3-mini", "openai"),
        ((OPENAI, DEEPSEEK, CLAUDE, LOCAL), "deepseek-chat", "deepseek"),
        ((OPENAI, DEEPSEEK, CLAUDE, LOCAL), "claude-sonnet-4-5", "anthropic"),
        ((OPENAI, DEEPSEEK, CLAUDE, LOCAL), "Qwen/Qwen2.5-7B-Instruct", "vllm"),
        ((OPENAI, DEEPSEEK, CLAUDE, LOCAL), None, "vllm"),
        ((OPENAI, DEEPSEEK), None, "openai"),
        ((OPENAI, EXACT_BEATS_GLOB), "gpt-4o-special", "special"),
        ((LOCAL, OPENAI), "gpt-4o", "openai"),  # a pattern match wins over the catch-all
        ((UpstreamSettings(),), "anything", "default"),
    ],
)
def test_choose_upstream(
    routes: tuple[UpstreamSettings, ...], model: str | None, expected: str
) -> None:
    assert choose_upstream(routes, model).name == expected


def test_model_without_route_is_refused() -> None:
    with pytest.raises(NoRoute, match="'llama-3'"):
        choose_upstream((OPENAI, DEEPSEEK), "llama-3")


@pytest.mark.parametrize(
    ("upstream", "path", "model", "url", "query"),
    [
        (OPENAI, "chat/completions", "gpt-4o", "https://api.openai.com/v1/chat/completions", {}),
        (CLAUDE, "messages", "claude-haiku-4-5", "https://api.anthropic.com/v1/messages", {}),
        (
            AZURE, "chat/completions", "gpt-4o",
            "https://contoso.openai.azure.com/openai/deployments/prod-4o/chat/completions",
            {"api-version": "2024-10-21"},
        ),
        (
            AZURE, "embeddings", "azure-embed",
            "https://contoso.openai.azure.com/openai/deployments/azure-embed/embeddings",
            {"api-version": "2024-10-21"},
        ),
        (
            AZURE, "models", None, "https://contoso.openai.azure.com/openai/models",
            {"api-version": "2024-10-21"},
        ),
        (
            UpstreamSettings(kind="azure", url="https://contoso.openai.azure.com/openai/v1"),
            "chat/completions", "gpt-4o",
            "https://contoso.openai.azure.com/openai/v1/chat/completions", {},
        ),
        # Gemini's url is the API root: the client's version (v1beta here) stays in the path.
        (
            GEMINI, "models/gemini-2.5-flash:generateContent", "gemini-2.5-flash",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
            {},
        ),
        (
            GEMINI_COMPAT, "chat/completions", "gemini-2.5-flash",
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", {},
        ),
    ],
)  # fmt: skip
def test_target(
    upstream: UpstreamSettings, path: str, model: str | None, url: str, query: dict[str, str]
) -> None:
    where = target(upstream, path, model, "v1beta")
    assert (where.url, where.query) == (url, query)


BEARER = [("authorization", "Bearer sk-client"), ("content-type", "application/json")]


@pytest.mark.parametrize(
    ("upstream", "client", "expected"),
    [
        (OPENAI, BEARER, [("authorization", "Bearer sk-client")]),
        (
            OPENAI.model_copy(update={"api_key": "sk-proxy"}),
            BEARER,
            [("authorization", "Bearer sk-proxy")],
        ),
        (AZURE, BEARER, [("api-key", "sk-client")]),
        (AZURE, [("api-key", "az-key")], [("api-key", "az-key")]),
        (AZURE.model_copy(update={"api_key": "az-proxy"}), BEARER, [("api-key", "az-proxy")]),
        (
            AZURE,
            [("authorization", "Bearer eyJhbGciOi.entra")],
            [("authorization", "Bearer eyJhbGciOi.entra")],
        ),
        (
            CLAUDE,
            [("x-api-key", "sk-ant"), ("anthropic-version", "2023-06-01")],
            [("x-api-key", "sk-ant")],
        ),
        (CLAUDE, BEARER, [("x-api-key", "sk-client")]),
        (
            CLAUDE.model_copy(update={"api_key": "sk-ant-proxy"}),
            [("x-api-key", "sk-ant")],
            [("x-api-key", "sk-ant-proxy")],
        ),
        (LOCAL, [("content-type", "application/json")], []),
        (GEMINI, [("x-goog-api-key", "AIza-client")], [("x-goog-api-key", "AIza-client")]),
        # The openai SDK's bearer key goes where Gemini reads keys; an OAuth token stays.
        (GEMINI, BEARER, [("x-goog-api-key", "sk-client")]),
        (
            GEMINI,
            [("authorization", "Bearer ya29.a0AfB_byC-oauth")],
            [("authorization", "Bearer ya29.a0AfB_byC-oauth")],
        ),
        (
            GEMINI.model_copy(update={"api_key": "AIza-proxy"}),
            [("x-goog-api-key", "tp-virtual")],
            [("x-goog-api-key", "AIza-proxy")],
        ),
        (GEMINI_COMPAT, BEARER, [("authorization", "Bearer sk-client")]),
        # The Azure client's api-key, to upstreams that take bearer keys; a configured key wins.
        (OPENAI, [("api-key", "az-key")], [("authorization", "Bearer az-key")]),
        (LOCAL, [("api-key", "az-key")], [("authorization", "Bearer az-key")]),
        (
            OPENAI.model_copy(update={"api_key": "sk-proxy"}),
            [("api-key", "az-key")],
            [("authorization", "Bearer sk-proxy")],
        ),
        (
            OPENAI,
            [("api-key", "az-key"), *BEARER],
            [("api-key", "az-key"), ("authorization", "Bearer sk-client")],
        ),
    ],
)
def test_credential_headers(
    upstream: UpstreamSettings, client: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    assert credential_headers(upstream, client) == expected


@pytest.mark.parametrize(
    ("upstream", "asks_for_stream_usage", "provider"),
    [
        (OPENAI, True, "openai"),
        (CLAUDE, False, "anthropic"),
        (AZURE, True, "azure"),
        (LOCAL, True, None),
        (
            LOCAL.model_copy(update={"inject_stream_usage": False, "provider": "deepseek"}),
            False,
            "deepseek",
        ),
        # Gemini streams always carry usageMetadata; Google's price list, native or not.
        (GEMINI, False, "google"),
        (GEMINI_COMPAT, True, "google"),
        (GEMINI_COMPAT.model_copy(update={"provider": "openrouter"}), True, "openrouter"),
        (
            UpstreamSettings(url="https://user:pw@GENERATIVELANGUAGE.googleapis.com:443/v1"),
            True,
            "google",
        ),
    ],
)
def test_upstream_kind_defaults(
    upstream: UpstreamSettings, asks_for_stream_usage: bool, provider: str | None
) -> None:
    assert upstream.stream_usage is asks_for_stream_usage
    assert upstream.pricing_provider == provider


@pytest.mark.parametrize(
    ("path", "raw", "problem"),
    [
        ("../expensive/chat/completions", b"/v1/..%2Fexpensive/chat/completions", "'..'"),
        ("../admin/keys", b"/v1/../admin/keys", "'..'"),
        ("chat/../../admin", b"/v1/chat/%2e%2E/%2E%2e/admin", "'..'"),
        ("chat/./completions", b"/v1/chat/%2e/completions", "'.'"),
        ("chat/completions/..", b"/v1/chat/completions/..", "'..'"),
        (".", b"/v1/.", "'.'"),
        ("chat/completions?api-version=1", b"/v1/chat/completions%3Fapi-version=1", "'?'"),
        ("chat/completions#x", b"/v1/chat/completions%23x", "'#'"),
        ("chat\\..\\admin", b"/v1/chat%5C..%5Cadmin", "backslash"),
        ("chat/%2e%2e/admin", b"/v1/chat/%252e%252e/admin", "percent-encoded twice"),
        ("chat/com\x00pletions", b"/v1/chat/com%00pletions", "control"),
        ("chat/com\npletions", b"/v1/chat/com%0Apletions", "control"),
        ("chat/com\x85pletions", b"/v1/chat/com%C2%85pletions", "control"),
        ("chat/\ufffd", b"/v1/chat/%FF", "not UTF-8"),
        ("files/a\\b/content", b"/v1/files/a%5cb/content", "backslash"),
        ("chat/%zz", b"/v1/chat/%zz", "percent-encoded twice"),
    ],
)
def test_paths_that_would_change_the_target_are_refused(
    path: str, raw: bytes, problem: str
) -> None:
    # ``raw`` is what the client sent; ``path`` what ASGI decodes it to, and what is checked.
    assert unquote(raw.decode("latin-1"))[4:] == path
    with pytest.raises(UnsafePath, match=re.escape(problem)) as caught:
        check_path(path)
    assert caught.value.param == "path"


@pytest.mark.parametrize(
    "path",
    [
        "chat/completions",
        "models/ft:gpt-4o-mini:org:custom:abc123",
        "files/file-abc/content",
        "",
        "a..b/.hidden/x.",  # dots inside a segment are not dot segments
        "vector_stores/vs_1/files",
        "models/Qwen/Qwen2.5-7B-Instruct",
        "模型/ü",
    ],
)
def test_ordinary_paths_pass(path: str) -> None:
    check_path(path)


@pytest.mark.parametrize(
    ("path", "raw", "sent"),
    [
        ("models/ft:gpt-4o:org", b"/v1/models/ft:gpt-4o:org", "models/ft:gpt-4o:org"),
        ("files/a b", b"/v1/files/a%20b", "files/a%20b"),
        ("files/a b", b"/v1/files/a b", "files/a%20b"),
        ("模型", "/v1/模型".encode(), "%E6%A8%A1%E5%9E%8B"),
        ("模型", b"/v1/%e6%a8%a1%e5%9e%8b", "%e6%a8%a1%e5%9e%8b"),
        # An encoded '/' stays encoded: the openai SDK sends models.retrieve("org/m") so.
        ("models/org/m", b"/v1/models/org%2Fm", "models/org%2Fm"),
        # Without a raw path (or one not literally /v1/), the decoded path is encoded again.
        ("files/a b", None, "files/a%20b"),
        ("chat/completions", b"/%76%31/chat/completions", "chat/completions"),
    ],
)
def test_the_upstream_path_keeps_the_clients_encoding(
    path: str, raw: bytes | None, sent: str
) -> None:
    assert upstream_path(path, raw) == sent
    assert target(OPENAI, upstream_path(path, raw), "gpt-4o").url.endswith("/v1/" + sent)


@pytest.mark.parametrize(
    "model",
    ["cheap/../expensive", "..", "cheap?api-version=2020-01-01", "cheap#", "a\\b", "a%2Fb", "\x00"],
)
def test_a_model_that_is_not_one_deployment_segment_is_refused(model: str) -> None:
    with pytest.raises(UnsafePath) as caught:
        target(AZURE, "chat/completions", model)
    assert caught.value.param == "model"


def test_a_configured_deployment_name_is_used_as_is() -> None:
    assert target(AZURE, "chat/completions", "gpt-4o").url.endswith("/prod-4o/chat/completions")


def test_a_credential_in_the_route_headers_replaces_every_client_credential() -> None:
    route = OPENAI.model_copy(update={"headers": {"API-Key": "sk-route"}})
    sent = [("authorization", "Bearer tp-virtual"), ("x-api-key", "sk-client")]
    assert credential_headers(route, sent) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://generativelanguage.googleapis.com/v1beta",
        "https://generativelanguage.googleapis.com/v1/",
        "http://127.0.0.1:9000/v1alpha",
    ],
)
def test_a_gemini_url_is_the_api_root(url: str) -> None:
    with pytest.raises(ValueError, match="API root"):
        UpstreamSettings(kind="gemini", url=url)


def test_the_gemini_upstream_path_keeps_the_clients_encoding() -> None:
    raw = b"/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    sent = upstream_path("models/gemini-2.5-flash:streamGenerateContent", raw, b"/v1beta/")
    assert sent == "models/gemini-2.5-flash:streamGenerateContent"
