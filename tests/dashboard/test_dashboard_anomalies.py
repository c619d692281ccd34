"""Anomalies in the dashboard: a panel lists them, and the sessions and users they name are
marked where the overview and the session page show them."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from proxy.anomalies.detect import Anomaly, Baseline, Exceeded, Observation
from proxy.store.anomalies import AnomalyStore, window_start
from proxy.store.engine import create_engine
from tests.dashboard.browser import Browser
from tests.dashboard.conftest import HOSTILE_USER, seed, week_of_usage
from tests.dashboard.test_dashboard_browser import READY, load, table_rows, text
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream


async def _flag(database_url: str, kind: str, subject: str, at: datetime, tokens: int) -> None:
    seen = Observation(kind, subject, None, window_start(at, 1), Decimal("0.5"), tokens)
    base = Baseline(Decimal(120), Decimal(4), 6, 30)
    exceeded = Exceeded("total_tokens", Decimal(tokens), base, Decimal(1200))
    engine = create_engine(database_url)
    try:
        await AnomalyStore(engine).claim(Anomaly(seen, (exceeded,)), 1, [], at)
    finally:
        await engine.dispose()


async def test_anomalies_are_listed_and_marked(
    fake_upstream: FakeUpstream, sqlite_url: str, now: datetime, browser: Browser, tmp_path: Path
) -> None:
    await seed(sqlite_url, week_of_usage(now))
    await _flag(sqlite_url, "session", "batch-1", now - timedelta(hours=8), 9000)
    await _flag(sqlite_url, "user", HOSTILE_USER, now - timedelta(hours=2), 5000)
    async with start_proxy(proxy_settings(fake_upstream.base_url, sqlite_url)) as proxy:
        page = await browser.new_page()
        await load(page, f"{proxy.url}/dashboard")
        rows = await page.evaluate(table_rows("#anomalies-table"))
        assert [row[:2] for row in rows] == [["user", HOSTILE_USER + "anomaly"],
                                             ["session", "batch-1anomaly"]]  # fmt: skip
        assert [row[3] for row in rows] == ["5,000", "9,000"] and rows[0][4] == "120"
        marked = "[...document.querySelectorAll('#top-sessions .anomaly')].length"
        assert await page.evaluate(marked) == 1
        badge = "document.querySelector('#top-sessions .anomaly').title"
        assert "9,000 tokens" in await page.evaluate(badge)
        assert await page.evaluate("document.body.dataset.pwned ?? null") is None
        await page.screenshot(tmp_path / "anomalies.png")

        await page.evaluate(
            "[...document.querySelectorAll('#anomalies-table a')]"
            ".find(a => a.textContent === 'batch-1').click()"
        )
        await page.wait_for(f"{READY} && {text('#session-id')} === 'batch-1'")
        assert await page.evaluate(text(".session-title .anomaly")) == "anomaly"
        await load(page, f"{proxy.url}/dashboard/#/session/batch-2")
        assert await page.evaluate("document.querySelector('.session-title .anomaly')") is None
        assert page.errors() == []
