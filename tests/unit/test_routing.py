import pytest

from proxy.config import UpstreamSettings
from proxy.routing import NoRoute, choose_upstream, credential_headers, target

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
    ],
)  # fmt: skip
def test_target(
    upstream: UpstreamSettings, path: str, model: str | None, url: str, query: dict[str, str]
) -> None:
    where = target(upstream, path, model)
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
    ],
)
def test_upstream_kind_defaults(
    upstream: UpstreamSettings, asks_for_stream_usage: bool, provider: str | None
) -> None:
    assert upstream.stream_usage is asks_for_stream_usage
    assert upstream.pricing_provider == provider
