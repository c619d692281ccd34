"""A proxy with an upstream key of its own and an admin token, so virtual keys can be used."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream

ADMIN_TOKEN = "admin-secret-token"
UPSTREAM_KEY = "sk-upstream-real-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def keyed_proxy(fake_upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[RunningProxy]:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        upstream__api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN,
    )
    async with start_proxy(settings) as running:
        running.api.headers.update(ADMIN)  # the helpers read records through the usage API
        yield running


async def issue_key(api: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    """``POST /admin/keys`` with the admin token; the answer holds the key once."""
    response = await api.post("/admin/keys", json={"name": "app", **fields}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
