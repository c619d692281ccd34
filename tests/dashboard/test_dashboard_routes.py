"""The dashboard's files: served without the admin token, with a strict CSP, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from proxy.dashboard import dashboard_router, load_static_files
from tests.dashboard.browser import INSTALL_HINT, ChromiumMissing, find_chromium


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(dashboard_router())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
        yield client


async def test_page_and_files(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard")
    assert response.status_code == 308
    assert response.headers["location"] == "dashboard/"  # relative: works under a path prefix
    page = await client.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="static/app.js"' in page.text
    script = await client.get("/dashboard/static/app.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    again = await client.get(
        "/dashboard/static/app.js", headers={"if-none-match": script.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path", ["/dashboard/static/nope.js", "/dashboard/static/..%2F__init__.py", "/dashboard/x"]
)
async def test_unknown_files(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


def test_every_static_file_is_served_and_nothing_uses_inner_html() -> None:
    files = load_static_files()
    assert set(files) == {"index.html", "dashboard.css", "app.js", "api.js", "chart.js",
                          "dom.js", "format.js", "anomalies.js"}  # fmt: skip
    for name, file in files.items():
        if name.endswith(".js"):
            text = file.body.decode()
            assert "innerHTML" not in text.replace("no innerHTML", "")
            assert "insertAdjacentHTML" not in text and "eval(" not in text


def test_missing_chromium_names_the_package(tmp_path: object) -> None:
    with pytest.raises(ChromiumMissing) as caught:
        find_chromium(path=str(tmp_path))
    assert str(caught.value) == INSTALL_HINT
    assert "apt-get install -y chromium" in str(caught.value)
