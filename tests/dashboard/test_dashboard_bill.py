"""The dashboard's reconciliation panel: the comparisons the periodic job stored, and no
panel where there are none."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.store.engine import create_engine
from proxy.store.reconciliations import ReconciliationStore
from tests.dashboard.browser import Browser
from tests.dashboard.conftest import seed, week_of_usage
from tests.dashboard.test_dashboard_browser import READY, load, table_rows
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream


def _stored(provider: str, day: datetime, pct: float, **fields: Any) -> dict[str, Any]:
    return {
        "provider": provider, "bucket_width": "1d", "bucket_start": day,
        "bucket_end": day + timedelta(days=1), "final": True, "computed_at": day,
        "measure": "cost_usd", "difference_pct": pct, "billed_cost_usd": Decimal("1.25"),
        "metered_cost_usd": Decimal("1.2"), "unpriced_requests": 0, "bypass": False,
        "comparison": {"data": []}, **fields,
    }  # fmt: skip


async def test_the_panel_shows_the_stored_comparisons(
    fake_upstream: FakeUpstream, sqlite_url: str, now: datetime, browser: Browser, tmp_path: Path
) -> None:
    await seed(sqlite_url, week_of_usage(now))
    async with start_proxy(proxy_settings(fake_upstream.base_url, sqlite_url)) as proxy:
        page = await browser.new_page()
        await load(page, f"{proxy.url}/dashboard")
        assert await page.evaluate("document.querySelector('#provider-bill') === null")
        day = now.replace(hour=0, minute=0, second=0) - timedelta(days=2)
        engine = create_engine(sqlite_url)
        try:
            await ReconciliationStore(engine).save(
                [
                    _stored("openai", day, 4.0),
                    _stored(
                        "anthropic",
                        day + timedelta(days=1),
                        -12.5,
                        bypass=True,
                        unpriced_requests=3,
                        final=False,
                        billed_cost_usd=None,
                    ),
                ]
            )
        finally:
            await engine.dispose()
        await load(page, f"{proxy.url}/dashboard")
        await page.wait_for(f"{READY} && !!document.querySelector('#bill-table')")
        assert await page.evaluate(table_rows("#bill-table")) == [
            ["anthropic", (day + timedelta(days=1)).date().isoformat(), "unknown", "$1.2",
             "-12.50 %", "cost", "open · bypass · 3 unpriced"],
            ["openai", day.date().isoformat(), "$1.25", "$1.2", "4.00 %", "cost", "final"],
        ]  # fmt: skip
        await page.screenshot(tmp_path / "bill.png")
        assert page.errors() == []
