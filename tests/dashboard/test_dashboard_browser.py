"""The dashboard in a real browser: the numbers it shows are the usage API's numbers.

A week of records is written to the database, a few more requests go through the running
proxy with the openai SDK, then headless Chromium loads ``/dashboard``, drills into a session
and applies filters. Screenshots land in the test's ``tmp_path``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from proxy.money import format_usd
from tests.dashboard.browser import Browser, Page
from tests.dashboard.conftest import HOSTILE_USER, seed, week_of_usage
from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream

READY = "document.body.dataset.state === 'ready'"
TOKEN = "s3cret-admin-token"


def text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)})?.textContent ?? null)"


def table_rows(selector: str) -> str:
    return (
        f"[...document.querySelectorAll({json.dumps(selector + ' tbody tr')})]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )


def usd(value: str | None) -> str:
    return "unknown" if value is None else "$" + format_usd(Decimal(value))


def count(value: int) -> str:
    return f"{value:,}"


async def api(proxy: RunningProxy, path: str, **params: Any) -> Any:
    response = await proxy.api.get(path, params={k: v for k, v in params.items() if v})
    response.raise_for_status()
    return response.json()


async def load(page: Page, url: str) -> None:
    await page.evaluate("document.body && delete document.body.dataset.state")
    await page.goto(url)
    await page.wait_for(READY)


async def check_cards(page: Page, rows: list[dict[str, Any]]) -> None:
    """The cards show the sums of the summary rows the test reads from the API itself."""
    costs = [Decimal(r["cost_usd"]) for r in rows if r["cost_usd"] is not None]
    assert await page.evaluate(text("#kpi-requests .value")) == count(
        sum(r["requests"] for r in rows)
    )
    assert await page.evaluate(text("#kpi-tokens .value")) == count(
        sum(r["total_tokens"] for r in rows)
    )
    expected_cost = "$" + format_usd(sum(costs, Decimal(0))) if costs else "unknown"
    assert await page.evaluate(text("#kpi-cost .value")) == expected_cost


def preorder(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node["children"] for n in preorder(child))]


def tree_line(total: dict[str, Any]) -> str:
    errors = f" · {count(total['errors'])} errors" if total["errors"] else ""
    return (
        f"{count(total['requests'])} requests · {count(total['total_tokens'])} tokens · "
        f"{usd(total['cost_usd'])}{errors}"
    )


async def test_dashboard_shows_the_api_numbers(
    fake_upstream: FakeUpstream, sqlite_url: str, now: datetime, browser: Browser, tmp_path: Path
) -> None:
    await seed(sqlite_url, week_of_usage(now))
    async with start_proxy(proxy_settings(fake_upstream.base_url, sqlite_url)) as proxy:
        headers = {"X-Session-Id": "chat-42", "X-User-Id": "alice", "X-Property-Env": "prod"}
        for n, path in enumerate(("/plan", "/plan/search", "/answer")):
            await proxy.sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"question {n}" * (n + 1)}],
                stream=n == 1,
                extra_headers={**headers, "X-Session-Path": path},
            )
        await proxy.records(3, session_id="chat-42")
        page = await browser.new_page()

        # Overview, last 7 days (the default), daily buckets.
        await load(page, f"{proxy.url}/dashboard")
        assert await page.evaluate("location.pathname") == "/dashboard/"
        since = (now - timedelta(days=7) + timedelta(minutes=1)).isoformat()
        days = (await api(proxy, "/usage/summary", group_by="day", since=since))["data"]
        await check_cards(page, days)
        bars = await page.evaluate(
            "[...document.querySelectorAll('#chart-tokens g.bar')].map(g => g.dataset.key)"
        )
        assert len(bars) == 8  # today and the 7 days before it, empty ones too
        assert {row["key"] for row in days} <= set(bars)
        models = (await api(proxy, "/usage/summary", group_by="model", since=since))["data"]
        assert await page.evaluate(table_rows("#top-models")) == [
            [row["key"], count(row["requests"]), count(row["total_tokens"]), usd(row["cost_usd"])]
            for row in models
        ]
        # Data reaches the page as text, never as markup.
        users = await page.evaluate(table_rows("#top-users"))
        assert any(row[0] == HOSTILE_USER for row in users)
        assert await page.evaluate("document.querySelectorAll('main img').length") == 0
        assert await page.evaluate("document.body.dataset.pwned ?? null") is None
        await page.screenshot(tmp_path / "overview.png")

        # Drill into the session made through the proxy: its requests in order.
        await page.evaluate(
            "[...document.querySelectorAll('#top-sessions a')]"
            ".find(a => a.textContent === 'chat-42').click()"
        )
        await page.wait_for(f"{READY} && {text('#session-id')} === 'chat-42'")
        records = list(
            reversed((await api(proxy, "/usage/requests", session_id="chat-42"))["data"])
        )
        shown = await page.evaluate(table_rows("#requests-table"))
        assert [row[0] for row in shown] == ["1", "2", "3"]
        assert [row[1] for row in shown] == [
            r["created_at"].replace("T", " ").split(".")[0].rstrip("Z") for r in records
        ]
        assert [row[5] for row in shown] == ["no", "yes", "no"]
        for row, record in zip(shown, records, strict=True):
            assert row[2:5] == ["gpt-4o-mini", "/v1/chat/completions", "200"]
            assert row[8] == count(record["total_tokens"])
            assert row[10] == usd(record["cost_usd"])
            assert row[11] == f"{round(record['latency_ms']):,} ms"
        session = await api(proxy, "/usage/sessions/chat-42")
        assert await page.evaluate(text("#kpi-cost .value")) == usd(session["cost_usd"])
        assert await page.evaluate(text("#kpi-requests .value")) == "3"
        # The path tree: every node in the API's order (costliest first), with its totals.
        shown_nodes = await page.evaluate(
            "[...document.querySelectorAll('#path-tree [data-path]')].map(n => "
            "[n.dataset.path, n.querySelector('.node-numbers').textContent])"
        )
        assert shown_nodes == [
            [node["path"], tree_line(node["total"])] for node in preorder(session["tree"])
        ]
        assert [path for path, _ in shown_nodes][:1] == ["/"]
        assert {path for path, _ in shown_nodes} == {"/", "/plan", "/plan/search", "/answer"}
        await page.screenshot(tmp_path / "session.png")

        # Back to the overview, filtered by user and property through the form.
        await page.evaluate("document.querySelector('a.back').click()")
        await page.wait_for(f"{READY} && !!document.querySelector('#top-models')")
        await page.evaluate(
            "(() => { const f = document.getElementById('filters');"
            " f.elements.user.value = 'bob'; f.elements.property.value = 'env:prod';"
            " f.elements.range.value = '24h'; f.querySelector('button[type=submit]').click(); })()"
        )
        await page.wait_for(f"{READY} && location.hash.includes('user=bob')")
        since = (now - timedelta(hours=24) + timedelta(minutes=1)).isoformat()
        filters = {"user_id": "bob", "property": "env:prod", "since": since}
        hours = (await api(proxy, "/usage/summary", group_by="hour", **filters))["data"]
        assert hours, "the seed has requests of bob with env=prod in the last day"
        await check_cards(page, hours)
        hour_bars = await page.evaluate("document.querySelectorAll('#chart-cost g.bar').length")
        assert hour_bars in (24, 25)
        bob_cost = sum(Decimal(h["cost_usd"]) for h in hours if h["cost_usd"] is not None)
        assert await page.evaluate(table_rows("#top-users")) == [
            ["bob", count(total(hours, "requests")), count(total(hours, "total_tokens")),
             usd(str(bob_cost))]
        ]  # fmt: skip
        await page.screenshot(tmp_path / "filtered.png")
        assert page.errors() == []


def total(rows: list[dict[str, Any]], name: str) -> int:
    return sum(int(row[name]) for row in rows)


async def test_dashboard_asks_for_the_admin_token(
    fake_upstream: FakeUpstream, sqlite_url: str, now: datetime, browser: Browser, tmp_path: Path
) -> None:
    await seed(sqlite_url, week_of_usage(now))
    settings = proxy_settings(fake_upstream.base_url, sqlite_url, admin_token=TOKEN)
    async with start_proxy(settings) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url) as anonymous:
            assert (await anonymous.get("/dashboard/static/app.js")).status_code == 200
            assert (await anonymous.get("/usage/summary?group_by=day")).status_code == 401
        page = await browser.new_page()
        await page.goto(f"{proxy.url}/dashboard/")
        await page.wait_for("document.body.dataset.state === 'error'")
        message = await page.evaluate(text("#message"))
        assert "admin token" in message
        await page.screenshot(tmp_path / "token-needed.png")

        await page.evaluate(
            f"document.getElementById('token-input').value = {json.dumps(TOKEN)};"
            "document.querySelector('#token-form button[type=submit]').click()"
        )
        await page.wait_for(READY)
        assert await page.evaluate("sessionStorage.getItem('tallyproxy.adminToken')") == TOKEN
        assert await page.evaluate("document.getElementById('message').hidden") is True
        since = (now - timedelta(days=7) + timedelta(minutes=1)).isoformat()
        proxy.api.headers["Authorization"] = f"Bearer {TOKEN}"
        await check_cards(
            page, (await api(proxy, "/usage/summary", group_by="day", since=since))["data"]
        )
        # Reloading keeps the token for the tab's life.
        await load(page, f"{proxy.url}/dashboard/#/?range=30d")
        assert await page.evaluate(text("#token-state")) == "token set"
        assert page.errors() == [] or all("401" in e for e in page.errors())
