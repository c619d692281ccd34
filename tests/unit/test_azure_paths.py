"""The Azure OpenAI client's paths, as the openai SDK's AzureOpenAI sends them."""

from __future__ import annotations

import orjson
import pytest

from proxy.azure_paths import AzureCall, azure_call, without_api_version
from proxy.plan import plan_request, with_deployment


@pytest.mark.parametrize(
    ("path", "raw", "expected"),
    [
        # AzureOpenAI(azure_endpoint=...): the deployment is the call's model.
        (
            "/openai/deployments/gpt-4o/chat/completions",
            b"/openai/deployments/gpt-4o/chat/completions",
            AzureCall("chat/completions", "gpt-4o", b"/openai/deployments/gpt-4o/"),
        ),
        (
            "/openai/deployments/text-embedding-3-small/embeddings",
            b"/openai/deployments/text-embedding-3-small/embeddings",
            AzureCall(
                "embeddings",
                "text-embedding-3-small",
                b"/openai/deployments/text-embedding-3-small/",
            ),
        ),
        # AzureOpenAI(base_url=".../v1"): the same under /v1.
        (
            "/v1/deployments/prod-4o/audio/transcriptions",
            b"/v1/deployments/prod-4o/audio/transcriptions",
            AzureCall("audio/transcriptions", "prod-4o", b"/v1/deployments/prod-4o/"),
        ),
        # What no deployment serves: /openai/<op>.
        ("/openai/models", b"/openai/models", AzureCall("models", None, b"/openai/")),
        (
            "/openai/models/org/model",
            b"/openai/models/org%2Fmodel",
            AzureCall("models/org/model", None, b"/openai/"),
        ),
        # Percent-encoded deployment names keep their bytes; an encoded '/' in one makes
        # the raw split unsure: the operation is encoded again.
        (
            "/openai/deployments/my model/chat/completions",
            b"/openai/deployments/my%20model/chat/completions",
            AzureCall("chat/completions", "my model", b"/openai/deployments/my%20model/"),
        ),
        (
            "/openai/deployments/a/b/chat/completions",
            b"/openai/deployments/a%2Fb/chat/completions",
            AzureCall("b/chat/completions", "a", None),
        ),
        (
            "/openai/deployments/gpt-4o/chat/completions",
            None,
            AzureCall("chat/completions", "gpt-4o", None),
        ),
        # Not the Azure client's.
        ("/v1/chat/completions", b"/v1/chat/completions", None),
        ("/v1/deployments", b"/v1/deployments", None),
        ("/v1/deployments/gpt-4o", b"/v1/deployments/gpt-4o", None),
        ("/openai/", b"/openai/", None),
        ("/v1beta/openai/chat/completions", b"/v1beta/openai/chat/completions", None),
    ],
)
def test_azure_call(path: str, raw: bytes | None, expected: AzureCall | None) -> None:
    assert azure_call(path, raw) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("api-version=2024-06-01", ""),
        ("api-version=2024-06-01&limit=5", "limit=5"),
        ("after=file-1&api-version=2024-10-21&limit=5", "after=file-1&limit=5"),
        ("limit=5", "limit=5"),
        ("", ""),
    ],
)
def test_without_api_version(query: str, expected: str) -> None:
    assert without_api_version(query) == expected


@pytest.mark.parametrize(
    ("body", "deployment", "sent", "model"),
    [
        # The SDK always sends the model: it wins, and the body stays as sent.
        (
            b'{"model":"gpt-4o","messages":[]}',
            "prod-4o",
            b'{"model":"gpt-4o","messages":[]}',
            "gpt-4o",
        ),
        # A body without one (curl, other clients) is for the deployment, spliced in.
        (
            b'{"messages": []}',
            "gpt-4o-mini",
            b'{"model":"gpt-4o-mini","messages": []}',
            "gpt-4o-mini",
        ),
        (b' { "input": "a" }', "emb", b' {"model":"emb", "input": "a" }', "emb"),
        (b"{}", "gpt-4o", b'{"model":"gpt-4o"}', "gpt-4o"),
        (b'{"model": null, "input": "a"}', "emb", b'{"model":"emb","input":"a"}', "emb"),
        (
            b'{"messages":[],"x":"\\u00e9"}',
            'we"ird',
            b'{"model":"we\\"ird","messages":[],"x":"\\u00e9"}',
            'we"ird',
        ),
        # No body (GET): the deployment routes it; nothing to splice.
        (b"", "gpt-4o", b"", "gpt-4o"),
        # Not an Azure deployment path.
        (b'{"messages":[]}', None, b'{"messages":[]}', None),
    ],
)
def test_with_deployment(
    body: bytes, deployment: str | None, sent: bytes, model: str | None
) -> None:
    plan = with_deployment(
        plan_request("/v1/chat/completions", body, "application/json"), deployment
    )
    assert (plan.body, plan.model) == (sent, model)
    if sent:
        assert plan.json == orjson.loads(sent)
