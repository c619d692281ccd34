"""Reconciliation end to end: records made through the proxy (OpenAI SDK, fake upstream),
then the API, the CLI and the periodic job against the fake report server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli import main
from proxy.config import Settings, load_settings
from tests.access.test_alerts import Receiver
from tests.e2e.conftest import start_proxy
from tests.support.fake_reports import OPENAI_KEY, FakeReports, Traffic, run_fake_reports
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import run_asgi_server_async

ADMIN_TOKEN = "admin-token-for-reconcile"
MESSAGES = [{"role": "user", "content": "hi"}]
SECRET = "whsec-reconcile"


@pytest.fixture
def reports() -> Iterator[FakeReports]:
    with run_fake_reports() as fake:
        yield fake


def _config(
    upstream: str, database_url: str, reports_url: str, tmp: Path, **extra: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "upstream": {"url": upstream},
        "database": {"url": database_url, "spool_dir": str(tmp / "spool")},
        "admin_token": ADMIN_TOKEN,
        "reconcile": {
            "providers": {
                "openai": {
                    "api_key_env": "RECONCILE_OPENAI_ADMIN_KEY",
                    "url": reports_url,
                    "keys": [{"api_key_id": "key_proxy", "upstream": "default"}],
                }
            },
            **extra.pop("reconcile", {}),
        },
        **extra,
    }
    return config


def _settings(config: dict[str, Any], tmp: Path) -> tuple[Settings, Path]:
    path = tmp / "tallyproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = {"RECONCILE_OPENAI_ADMIN_KEY": OPENAI_KEY}
    return load_settings(path, environ=environ), path


async def test_api_and_cli_show_differences_and_bypass(
    fake_upstream: FakeUpstream,
    reports: FakeReports,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config(fake_upstream.base_url, database_url, reports.url, tmp_path)
    settings, path = _settings(config, tmp_path)
    now = datetime.now(UTC)
    # The provider saw the proxy's 3 requests on its key and 2 more (bypass), and a laptop's.
    reports.traffic = [
        Traffic(now, "gpt-4o-mini-2024-07-18", requests=5, input_tokens=5 * 19,
                output_tokens=5 * 10, api_key_id="key_proxy"),
        Traffic(now, "gpt-4o-mini-2024-07-18", requests=1, input_tokens=7, output_tokens=1,
                api_key_id="key_laptop"),
    ]  # fmt: skip
    reports.page_size = 1
    async with start_proxy(settings) as proxy:
        for _ in range(3):
            await proxy.sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        refused = await proxy.api.get("/usage/reconciliation", params={"provider": "openai"})
        assert refused.status_code == 401
        proxy.api.headers["authorization"] = f"Bearer {ADMIN_TOKEN}"
        await proxy.records(3)
        since = (now - timedelta(days=1)).isoformat()
        response = await proxy.api.get(
            "/usage/reconciliation", params={"provider": "openai", "since": since}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        held = next(r for r in body["data"] if r["api_key_id"] == "key_proxy")
        assert held["model"] == "gpt-4o-mini"
        assert held["provider"]["requests"] == 5 and held["tallyproxy"]["requests"] == 3
        assert held["bypass"] == {"requests": 2, "input_tokens": 38, "output_tokens": 20}
        assert held["difference"]["requests"] == {"absolute": 2, "relative": "0.4"}
        assert body["bypass"] is True
        other = next(r for r in body["data"] if r["api_key_id"] == "(other keys)")
        assert other["provider"]["requests"] == 1 and other["bypass"] is None
        assert [b["final"] for b in body["buckets"]] == [False]  # today is partial
        hourly = await proxy.api.get(
            "/usage/reconciliation",
            params={"provider": "openai", "since": since, "bucket_width": "1h"},
        )
        assert hourly.status_code == 200
        assert sum(r["tallyproxy"]["requests"] for r in hourly.json()["data"]) == 3
        missing = await proxy.api.get("/usage/reconciliation", params={"provider": "anthropic"})
        assert missing.status_code == 400 and "reconcile.providers.anthropic" in missing.text

        reports.fail_next = [(401, {})]
        failed = await proxy.api.get("/usage/reconciliation", params={"provider": "openai"})
        assert failed.status_code == 502
        assert failed.json()["error"]["message"].startswith(
            "openai: GET /v1/organization/usage/completions: HTTP 401"
        )

    monkeypatch.setenv("RECONCILE_OPENAI_ADMIN_KEY", OPENAI_KEY)
    args = ["reconcile", "--config", str(path), "--provider", "openai", "--since", "2d"]
    code = await asyncio.to_thread(main, [*args, "--format", "json"])
    assert code == 0
    code = await asyncio.to_thread(main, [*args, "--format", "csv"])
    assert code == 0
    reports.fail_next = [(403, {})]
    assert await asyncio.to_thread(main, args) == 1


async def test_the_job_stores_comparisons_and_alerts_once_signed(
    fake_upstream: FakeUpstream, reports: FakeReports, tmp_path: Path
) -> None:
    yesterday = datetime.now(UTC).replace(hour=1) - timedelta(days=1)
    reports.traffic = [
        Traffic(yesterday, "gpt-4o-mini-2024-07-18", requests=4, input_tokens=400,
                output_tokens=40, cost_usd=Decimal("0.0001"), api_key_id="key_proxy"),
    ]  # fmt: skip
    receiver = Receiver(failures=1)
    async with run_asgi_server_async(receiver.app) as hook_url:
        config = _config(
            fake_upstream.base_url,
            f"sqlite+aiosqlite:///{tmp_path}/t.db",
            reports.url,
            tmp_path,
            reconcile={"interval": 60, "alert_pct": 5, "settle_hours": 0, "lookback_days": 3},
            alerts={"webhook_url": f"{hook_url}/hook", "webhook_secret": SECRET,
                    "retry_seconds": 0.05},
        )  # fmt: skip
        settings, _ = _settings(config, tmp_path)
        async with start_proxy(settings) as proxy:
            alerts = await receiver.wait(1)
            proxy.api.headers["authorization"] = f"Bearer {ADMIN_TOKEN}"
            stored = await proxy.api.get(
                "/usage/reconciliation",
                params={"provider": "openai", "stored": "true",
                        "since": (yesterday - timedelta(days=1)).isoformat()},
            )  # fmt: skip
    assert len(alerts) == 1
    (alert,) = alerts
    assert alert["type"] == "reconciliation.difference" and alert["provider"] == "openai"
    assert alert["bucket"]["final"] is True and alert["bucket"]["difference_pct"] == "100"
    body, signature = receiver.received[0]
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    rows = stored.json()["stored"]
    day = next(r for r in rows if r["bucket_start"].startswith(yesterday.date().isoformat()))
    assert day["final"] and day["alerted"] and day["bypass"]
    assert day["billed_cost_usd"] == "0.0001" and day["metered_cost_usd"] is None
    assert json.dumps(day["comparison"])  # the rows kept for the record
