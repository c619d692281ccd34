"""The ready banner of ``tallyproxy serve``: its lines from settings, and a real process's."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.access.mode import access_mode
from proxy.banner import banner_lines, base_url, redacted_url
from proxy.config import load_settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_process_server


def settings_of(**values: Any) -> Any:
    overrides = {tuple(key.split("__")): value for key, value in values.items()}
    return load_settings(None, overrides, environ={})


def banner_of(**values: Any) -> str:
    settings = settings_of(**values)
    return "\n".join(banner_lines(settings, access_mode(settings)))


def test_the_local_default_names_its_urls_database_upstream_and_open_access() -> None:
    text = banner_of()
    assert "clients use base URL http://127.0.0.1:8080/v1" in text
    assert "dashboard   http://127.0.0.1:8080/dashboard/" in text
    assert "usage API   http://127.0.0.1:8080/usage" in text
    assert "database    sqlite+aiosqlite:///./tallyproxy.db" in text
    assert "upstream    default (openai) https://api.openai.com/v1: every other model" in text
    assert "access      local: admin token not required" in text
    assert "virtual keys not required" in text


def test_no_secret_appears_in_the_banner() -> None:
    text = banner_of(
        database__url="postgresql+asyncpg://tally:s3cret-pw@db.internal:5432/tally",
        database__read_url="postgresql+asyncpg://ro:r3plica-pw@replica:5432/tally",
        upstream__api_key="sk-upstream-secret",
        admin_token="admin-secret-token",
    )
    for secret in ("s3cret-pw", "r3plica-pw", "sk-upstream-secret", "admin-secret-token"):
        assert secret not in text
    assert "postgresql+asyncpg://tally:***@db.internal:5432/tally" in text
    assert "reads from  postgresql+asyncpg://ro:***@replica:5432/tally" in text


@pytest.mark.parametrize(
    ("values", "token", "keys"),
    [
        (
            {"admin_token": "t", "upstream__api_key": "sk-k"},
            "locked: admin token required",
            "virtual keys required for requests to default (the proxy holds their key)",
        ),
        (
            {"admin_token": "t", "access__require_virtual_keys": True},
            "locked: admin token required",
            "virtual keys required on every /v1 request",
        ),
        (
            {"admin_token": "t"},
            "locked: admin token required",
            "virtual keys not required: clients send their own provider keys",
        ),
        (
            {"access__allow_anonymous": True, "upstream__api_key": "sk-k"},
            "anonymous: admin token not required",
            "virtual keys optional: requests without one use the proxy's key for default",
        ),
    ],
)
def test_the_access_lines_say_what_is_required(
    values: dict[str, Any], token: str, keys: str
) -> None:
    text = banner_of(**values)
    assert token in text and keys in text


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9000"),
        ("0.0.0.0", "http://127.0.0.1:9000"),
        ("::", "http://[::1]:9000"),
        ("::1", "http://[::1]:9000"),
        ("proxy.internal", "http://proxy.internal:9000"),
    ],
)
def test_the_base_url_is_one_a_client_can_use(host: str, url: str) -> None:
    assert base_url(host, 9000) == url


def test_an_unparsable_database_url_loses_its_credentials() -> None:
    assert "pw" not in redacted_url("not a url://user:pw@host")


def test_every_upstream_gets_a_line() -> None:
    text = banner_of(
        upstreams=[
            {"name": "oa", "url": "http://a.example/v1", "models": ["gpt-*"]},
            {"name": "an", "kind": "anthropic", "url": "http://b.example/v1"},
        ]
    )
    assert "upstream    oa (openai) http://a.example/v1: gpt-*" in text
    assert "upstream    an (anthropic) http://b.example/v1: every other model" in text


async def test_serve_prints_the_banner_once_ready(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "TALLYPROXY_UPSTREAM_URL": fake_upstream.base_url,
        "TALLYPROXY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db",
    }
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
    with run_process_server(command, port, env, log_path=log, cwd=tmp_path):
        pass
    text = log.read_text()
    assert f"clients use base URL http://127.0.0.1:{port}/v1" in text, text
    assert f"dashboard   http://127.0.0.1:{port}/dashboard/" in text
    assert f"database    sqlite+aiosqlite:///{tmp_path}/t.db" in text
    assert f"upstream    default (openai) {fake_upstream.base_url}" in text
    assert "access      local: admin token not required" in text
    assert text.count(" ready") == 1
