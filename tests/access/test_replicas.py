"""Two ``tallyproxy serve`` processes on one Postgres: budgets and revocations hold across them."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY
from tests.access.test_budgets_e2e import MESSAGES, MODEL, PRICES, REQUEST_COST, burst
from tests.support.fake_upstream import FakeUpstream, FakeUsage
from tests.support.servers import free_port, run_process_server

pytestmark = pytest.mark.postgres


def _config(
    tmp_path: Path, name: str, upstream: str, database: str, **extra: Any
) -> dict[str, str]:
    settings: dict[str, Any] = {
        "upstream": {"url": upstream, "api_key": UPSTREAM_KEY},
        "database": {"url": database, "spool_dir": str(tmp_path / f"spool-{name}")},
        "prices": PRICES,
        "access": {"key_cache_seconds": 0.5},
        "admin_token": ADMIN_TOKEN,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return {"TALLYPROXY_CONFIG": str(path)}


async def test_two_replicas_share_budgets_and_revocations(
    fake_upstream: FakeUpstream, postgres_url: str, tmp_path: Path
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)
    ports = free_port(), free_port()
    serve = [sys.executable, "-m", "proxy", "serve", "--port"]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    envs = [_config(tmp_path, name, fake_upstream.base_url, postgres_url) for name in "ab"]
    with (
        run_process_server([*serve, str(ports[0])], ports[0], envs[0]),
        run_process_server([*serve, str(ports[1])], ports[1], envs[1]),
    ):
        async with httpx.AsyncClient(base_url=urls[0], headers=ADMIN) as admin:
            key = (await admin.post("/admin/keys", json={"name": "shared"})).json()
            budget = {"scope": "global", "period": "month", "usd": "0.05", "name": "all"}
            assert (await admin.post("/admin/budgets", json=budget)).status_code == 201
            await asyncio.sleep(1.0)  # the other replica refreshes its definitions
            results = [*await asyncio.gather(*(burst(f"{url}/v1", key["key"], 10) for url in urls))]
            admitted = sum(r.count(None) for r in results)
            assert len(fake_upstream.requests) == admitted
            deadline = time.monotonic() + 10
            while True:
                [status] = (await admin.get("/usage/budgets")).json()["data"]
                if Decimal(status["reserved_usd"]) == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            spent = Decimal(status["spent_usd"])
            assert spent == admitted * REQUEST_COST
            assert spent - Decimal("0.05") <= REQUEST_COST
            # Revoked on one replica: refused by the other within its key cache time.
            await admin.delete("/admin/budgets/" + status["id"])
            async with openai.AsyncOpenAI(
                base_url=f"{urls[1]}/v1", api_key=key["key"], max_retries=0
            ) as other:
                await asyncio.sleep(0.6)  # budget deletion reaches replica b
                await other.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
                await admin.delete(f"/admin/keys/{key['id']}")
                revoked_at = time.monotonic()
                while True:
                    try:
                        await other.chat.completions.create(model=MODEL, messages=MESSAGES)
                    except openai.AuthenticationError:
                        break
                    assert time.monotonic() - revoked_at < 3, "revocation did not reach replica b"
                    await asyncio.sleep(0.1)


async def test_fifty_clients_on_two_replicas_without_max_tokens_overshoot_by_one_request(
    fake_upstream: FakeUpstream, postgres_url: str, tmp_path: Path
) -> None:
    """50 concurrent SDK clients, 25 per replica, none naming max_tokens, against one USD
    budget with a downgrade action: spend passes the limit by one request at most."""
    fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)
    fake_upstream.scenario, fake_upstream.delay_ms = "slow", 200  # all reserve before any settles
    ports = free_port(), free_port()
    serve = [sys.executable, "-m", "proxy", "serve", "--port"]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    extra = {
        "budgets": {"default_max_output_tokens": 20},
        "prices": [*PRICES, {"model": "cheaper-model", "input": 1, "output": 10}],
    }
    envs = [_config(tmp_path, name, fake_upstream.base_url, postgres_url, **extra) for name in "ab"]
    with (
        run_process_server([*serve, str(ports[0])], ports[0], envs[0]),
        run_process_server([*serve, str(ports[1])], ports[1], envs[1]),
    ):
        async with httpx.AsyncClient(base_url=urls[0], headers=ADMIN) as admin:
            key = (await admin.post("/admin/keys", json={"name": "fifty"})).json()
            budget = {"scope": "global", "period": "month", "usd": "0.1", "name": "all",
                      "actions": [{"at": 60, "downgrade": {MODEL: "cheaper-model"}}]}  # fmt: skip
            assert (await admin.post("/admin/budgets", json=budget)).status_code == 201
            await asyncio.sleep(1.0)  # the other replica refreshes its definitions

            async def client(url: str) -> str | None:
                async with openai.AsyncOpenAI(
                    base_url=f"{url}/v1", api_key=key["key"], max_retries=0
                ) as sdk:
                    try:
                        await sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
                    except openai.RateLimitError as exc:
                        return str(exc.code)
                    return None

            results = await asyncio.gather(*(client(urls[n % 2]) for n in range(50)))
            assert set(results) <= {None, "budget_exceeded"}
            admitted = results.count(None)
            assert admitted == len(fake_upstream.requests) >= 1
            deadline = time.monotonic() + 10
            while True:
                [status] = (await admin.get("/usage/budgets")).json()["data"]
                if Decimal(status["reserved_usd"]) == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert Decimal(status["spent_usd"]) - Decimal("0.1") <= REQUEST_COST
