"""Budget alerts: signed webhooks to a local receiver, once per threshold, retried on failure."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.access.alerts import crossed
from proxy.signing import sign
from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY
from tests.access.test_budgets_e2e import MESSAGES, MODEL, PRICES
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage
from tests.support.servers import run_asgi_server_async

SECRET = "whsec-test-secret"


class Receiver:
    """A webhook receiver that fails the first ``failures`` deliveries with a 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[bytes, str]] = []
        self.attempts = 0
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            return Response(status_code=500)
        self.received.append((await request.body(), request.headers.get("x-tally-signature", "")))
        return Response(status_code=204)

    async def wait(self, count: int) -> list[dict[str, Any]]:
        """The alerts received, once there are ``count`` (or after 10 s)."""
        deadline = time.monotonic() + 10
        while True:
            if len(self.received) >= count or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return [json.loads(body) for body, _ in self.received]


def test_crossed_thresholds() -> None:
    assert crossed([50, 80, 100], Decimal("0.79"), Decimal(1)) == [50]
    assert crossed([50, 80, 100], Decimal("1.2"), Decimal(1)) == [50, 80, 100]
    assert crossed([50], Decimal(0), Decimal(1)) == []


async def test_each_threshold_alerts_once_signed_and_retried(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)  # 29 tokens
    receiver = Receiver(failures=2)
    async with run_asgi_server_async(receiver.app) as hook_url:
        settings = proxy_settings(
            fake_upstream.base_url,
            f"sqlite+aiosqlite:///{tmp_path}/t.db",
            upstream__api_key=UPSTREAM_KEY,
            admin_token=ADMIN_TOKEN,
            prices=PRICES,
            access__key_cache_seconds=0.1,
            access__allow_anonymous=True,  # a user's budget, requests without virtual keys
            alerts__webhook_url=f"{hook_url}/hook",
            alerts__webhook_secret=SECRET,
            alerts__retry_seconds=0.05,
        )
        async with start_proxy(settings) as proxy:
            proxy.api.headers.update(ADMIN)
            budget = {"scope": "user", "subject": "erin", "period": "day", "tokens": 80,
                      "alerts": [25, 50, 100], "name": "erin-daily"}  # fmt: skip
            assert (await proxy.api.post("/admin/budgets", json=budget)).status_code == 201
            expected = {1: [25], 2: [25, 50], 3: [25, 50, 100]}
            for sent in (1, 2, 3):
                await proxy.sdk.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=10, user="erin"
                )
                alerts = await receiver.wait(len(expected[sent]))
                assert sorted(a["threshold"] for a in alerts) == expected[sent]
            await asyncio.sleep(0.5)  # more checks pass: nothing is sent twice
    assert sorted(a["threshold"] for a in await receiver.wait(3)) == [25, 50, 100]
    assert receiver.attempts == 3 + 2  # the first two deliveries failed and were retried
    for body, signature in receiver.received:
        assert signature == sign(SECRET, body)
        expected_mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, f"sha256={expected_mac}")
    last = json.loads(receiver.received[-1][0])
    assert last["type"] == "budget.threshold"
    assert last["budget"]["name"] == "erin-daily" and last["budget"]["spent_tokens"] == 87
    assert SECRET not in str(receiver.received)


async def test_a_forecast_inside_the_horizon_alerts_once(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)  # $0.0119 each
    receiver = Receiver(failures=0)
    async with run_asgi_server_async(receiver.app) as hook_url:
        settings = proxy_settings(
            fake_upstream.base_url,
            f"sqlite+aiosqlite:///{tmp_path}/t.db",
            upstream__api_key=UPSTREAM_KEY,
            admin_token=ADMIN_TOKEN,
            prices=PRICES,
            access__key_cache_seconds=0.1,
            access__allow_anonymous=True,
            alerts__webhook_url=f"{hook_url}/hook",
            alerts__webhook_secret=SECRET,
            alerts__forecast_hours=48,
        )
        async with start_proxy(settings) as proxy:
            proxy.api.headers.update(ADMIN)
            budget = {"scope": "user", "subject": "fay", "period": "total", "usd": "1",
                      "name": "fay-total"}  # fmt: skip
            assert (await proxy.api.post("/admin/budgets", json=budget)).status_code == 201
            [before] = (await proxy.api.get("/usage/budgets")).json()["data"]
            assert before["runs_out_at"] is None  # nothing spent yet: no pace
            assert before["burn"]["last_hour"] == {"usd_per_hour": "0", "tokens_per_hour": 0}
            for _ in range(2):
                await proxy.sdk.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=10, user="fay"
                )
            [alert] = await receiver.wait(1)
            await asyncio.sleep(0.5)  # more checks pass: sent once
            [status] = (await proxy.api.get("/usage/budgets")).json()["data"]
    assert len(receiver.received) == 1
    body, signature = receiver.received[0]
    assert signature == sign(SECRET, body)
    assert alert["type"] == "budget.forecast" and alert["budget"]["name"] == "fay-total"
    # $0.0238 in the last hour, $0.9762 left: 41 hours at that pace, inside the 48.
    assert status["burn"]["last_hour"] == {"usd_per_hour": "0.0238", "tokens_per_hour": 58}
    assert status["burn"]["last_day"]["usd_per_hour"] == "0.000991666667"
    for projected in (alert["runs_out_at"], status["runs_out_at"]):
        hours = (
            datetime.fromisoformat(projected) - datetime.fromisoformat(alert["fired_at"])
        ) / timedelta(hours=1)
        assert 40.9 < hours < 41.1
