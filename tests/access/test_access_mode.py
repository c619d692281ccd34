"""Secure defaults: a proxy that could be reached or holds a provider key is never open by
accident. The rule is decided by ``proxy.access.mode``; these tests break it on purpose."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.access.mode import access_mode, is_loopback
from proxy.app import create_app
from proxy.config import ConfigError, load_settings
from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY, issue_key
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_process_server

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def settings_of(**values: Any) -> Any:
    overrides = {tuple(key.split("__")): value for key, value in values.items()}
    return load_settings(None, overrides, environ={})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("proxy.internal", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("values", "mode"),
    [
        ({}, "local"),  # the README's first command
        ({"server__host": "localhost"}, "local"),
        ({"admin_token": "t"}, "locked"),
        ({"server__host": "0.0.0.0", "admin_token": "t"}, "locked"),
        ({"upstream__api_key": "sk", "admin_token": "t"}, "locked"),
        ({"server__host": "0.0.0.0", "access__allow_anonymous": True}, "anonymous"),
        ({"upstream__api_key": "sk", "access__allow_anonymous": True}, "anonymous"),
    ],
)
def test_access_modes(values: dict[str, Any], mode: str) -> None:
    assert access_mode(settings_of(**values)).name == mode


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"server__host": "0.0.0.0"}, "'0.0.0.0', beyond loopback"),
        ({"server__host": "10.1.2.3"}, "'10.1.2.3', beyond loopback"),
        ({"upstream__api_key": "sk-proxy"}, "provider key for upstream(s) default"),
        (
            {"upstreams": [{"name": "oa", "api_key_env": "HOME"}, {"name": "local"}]},
            "provider key for upstream(s) oa",
        ),
        # A credential among the upstream's extra headers is a provider key too.
        (
            {"upstream__headers": {"Api-Key": "azure-secret"}},
            "provider key for upstream(s) default",
        ),
        # allow_anonymous must be said explicitly: false is the default, and means no.
        ({"server__host": "0.0.0.0", "access__allow_anonymous": False}, "beyond loopback"),
    ],
)
def test_an_open_configuration_beyond_loopback_or_with_a_key_is_refused(
    values: dict[str, Any], named: str
) -> None:
    settings = load_settings(
        None,
        {tuple(k.split("__")): v for k, v in values.items()},
        environ={"HOME": "x"},
    )
    with pytest.raises(ConfigError) as refused:
        access_mode(settings)
    message = str(refused.value)
    assert named in message
    assert "admin_token (TALLYPROXY_ADMIN_TOKEN)" in message
    assert "access.allow_anonymous: true" in message
    with pytest.raises(ConfigError):
        create_app(settings)  # the app itself refuses too, not only the serve command


def test_the_mode_line_says_what_is_open() -> None:
    local = access_mode(settings_of()).description
    assert local.startswith("access: local on 127.0.0.1") and "open to this machine" in local
    locked = access_mode(settings_of(upstream__api_key="sk", admin_token="t")).description
    assert "/usage and /admin need the admin token" in locked
    assert "requests to default need a tallyproxy key" in locked
    anonymous = access_mode(
        settings_of(server__host="0.0.0.0", upstream__api_key="sk", access__allow_anonymous=True)
    ).description
    assert "use the proxy's key for default" in anonymous
    assert "open to anyone who reaches 0.0.0.0" in anonymous


def test_serve_refuses_to_start_open_on_a_public_address(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--host", "0.0.0.0", "--port", str(port)],
        env={
            "PATH": "/usr/bin:/bin",
            "TALLYPROXY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "tallyproxy would be open to anyone" in done.stderr
    assert "TALLYPROXY_ADMIN_TOKEN" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "t.db").exists()  # refused before touching anything


async def test_serve_logs_its_access_mode_at_start(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "TALLYPROXY_UPSTREAM_URL": fake_upstream.base_url,
        "TALLYPROXY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db",
        "TALLYPROXY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "TALLYPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
    with run_process_server(command, port, env, log_path=log, cwd=tmp_path):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            refused = await api.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 401
    lines = [line for line in log.read_text().splitlines() if "proxy.app: access: " in line]
    assert len(lines) == 1 and "access: locked" in lines[0], log.read_text()


async def test_no_credentials_never_get_the_proxy_key(
    keyed_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(base_url=keyed_proxy.base_url) as bare:
        for headers in ({}, {"Authorization": "Bearer sk-someone-elses"}, {"api-key": "x"}):
            refused = await bare.post("/chat/completions", json=CHAT, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "invalid_api_key"
    assert fake_upstream.requests == []
    issued = await issue_key(keyed_proxy.api)
    async with httpx.AsyncClient(base_url=keyed_proxy.base_url) as client:
        headers = {"Authorization": f"Bearer {issued['key']}"}
        assert (await client.post("/chat/completions", json=CHAT, headers=headers)).is_success
    assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_a_key_in_the_upstream_headers_is_guarded_like_api_key(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        upstream__headers={"Authorization": "Bearer sk-in-headers"},
        admin_token=ADMIN_TOKEN,
    )
    async with start_proxy(settings) as proxy:
        refused = await proxy.api.post("/v1/chat/completions", json=CHAT)  # no credentials
        assert refused.status_code == 401
        assert fake_upstream.requests == []
        issued = await issue_key(proxy.api)
        headers = {"Authorization": f"Bearer {issued['key']}"}
        allowed = await proxy.api.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert allowed.status_code == 200, allowed.text
    assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-in-headers"


async def test_anonymous_admin_calls_cannot_mint_keys_when_locked(
    keyed_proxy: RunningProxy,
) -> None:
    async with httpx.AsyncClient(base_url=keyed_proxy.url) as anonymous:
        minted = await anonymous.post("/admin/keys", json={"name": "mine"})
        assert minted.status_code == 401
        assert (await anonymous.get("/usage/requests")).status_code == 401
    listed = await keyed_proxy.api.get("/admin/keys", headers=ADMIN)
    assert listed.json()["data"] == []


async def test_allow_anonymous_lets_requests_without_a_key_use_the_proxy_key(
    fake_upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        upstream__api_key=UPSTREAM_KEY,
        access__allow_anonymous=True,
    )
    async with start_proxy(settings) as proxy:
        answer = await proxy.api.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200, answer.text
    assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    warned = [r for r in caplog.records if r.getMessage().startswith("access: anonymous")]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
