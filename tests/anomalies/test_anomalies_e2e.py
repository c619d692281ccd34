"""Anomalies end to end: peers' sessions in the hours before, a runaway session through two
running proxies with the openai SDK; one signed webhook names it with its baseline and top
requests, and ``GET /usage/anomalies`` lists it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.store.engine import create_engine
from proxy.store.migrate import upgrade_database
from proxy.store.rows import write_records
from proxy.usage import Usage
from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY, issue_key
from tests.digest.receiver import Receiver
from tests.digest.test_digest_cli import flag
from tests.digest.test_digest_e2e import COST, MESSAGES, MODEL, PRICES
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.store.factory import make_record
from tests.support.fake_upstream import FakeUpstream, FakeUsage
from tests.support.servers import run_asgi_server_async

SECRET = "whsec-anomalies"


def peer_session(index: int) -> Any:
    """Carol's ordinary session ``p<index>``, ``index + 1`` hours ago: 29 tokens, $0.0119."""
    at = datetime.now(UTC) - timedelta(hours=index + 1)
    usage = Usage(prompt_tokens=19, completion_tokens=10, total_tokens=29)
    return make_record(
        created_at=at, model=MODEL, session_id=f"p{index}", user_id="carol", usage=usage,
        cost_usd=COST,
    )  # fmt: skip


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_a_runaway_session_is_reported_once(
    fake_upstream: FakeUpstream, tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    database_url = (
        f"sqlite+aiosqlite:///{tmp_path}/t.db"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        await write_records(engine, [peer_session(i) for i in range(4)])
    finally:
        await engine.dispose()
    receiver = Receiver(SECRET)
    async with run_asgi_server_async(receiver.app) as hook_url:
        settings = proxy_settings(
            fake_upstream.base_url, database_url, upstream__api_key=UPSTREAM_KEY,
            admin_token=ADMIN_TOKEN, prices=PRICES, access__allow_anonymous=True,
            anomalies__enabled=True, anomalies__k=10, anomalies__window="1h",
            anomalies__baseline_days=1, anomalies__min_peers=3, anomalies__interval_seconds=1,
            anomalies__subjects=["session"], anomalies__webhook_url=f"{hook_url}/hook",
            anomalies__webhook_secret=SECRET,
        )  # fmt: skip
        async with start_proxy(settings) as proxy, start_proxy(settings) as other:
            proxy.api.headers.update(ADMIN)
            fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)
            await proxy.sdk.chat.completions.create(
                model=MODEL, messages=MESSAGES, user="carol",
                extra_headers={"X-Session-Id": "ordinary"},
            )  # fmt: skip
            fake_upstream.usage = FakeUsage(prompt_tokens=190, completion_tokens=200)
            for client in (proxy, other, proxy):  # 3 x 390 tokens, 3 x $0.219
                await client.sdk.chat.completions.create(
                    model=MODEL, messages=MESSAGES, user="carol",
                    extra_headers={"X-Session-Id": "runaway"},
                )  # fmt: skip
            runaway = await proxy.records(3, session_id="runaway")
            (sent,) = await receiver.wait(1)
            await asyncio.sleep(2.5)  # more rounds on both replicas: nothing is sent twice
            listed = (await proxy.api.get("/usage/anomalies")).json()["data"]
            bad = await proxy.api.get("/usage/anomalies", params={"kind": "model"})
    assert receiver.bad_signatures == 0 and len(receiver.bodies) == 1
    assert sent["type"] == "usage.anomaly"
    anomaly = sent["anomaly"]
    assert (anomaly["kind"], anomaly["subject"], anomaly["peer_group"]) == (
        "session", "runaway", "carol"
    )  # fmt: skip
    assert anomaly["total_tokens"] >= 390
    tokens = anomaly["baseline"]["total_tokens"]
    assert (tokens["median"], tokens["mad"], tokens["peers"]) == ("29", "0", 4)
    assert tokens["threshold"] == "290"
    assert anomaly["baseline"]["cost_usd"]["median"] == "0.0119"
    top = anomaly["top_requests"]
    assert {r["id"] for r in top} <= {r["id"] for r in runaway} and top
    assert all(r["session_id"] == "runaway" and r["cost_usd"] == "0.219" for r in top)
    assert [a["id"] for a in listed] == [anomaly["id"]]
    assert listed[0]["delivered_at"] is not None
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kind"


async def test_a_virtual_key_reads_its_own_anomalies_only(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    settings = proxy_settings(
        fake_upstream.base_url, database_url, upstream__api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN,
    )  # fmt: skip
    async with start_proxy(settings) as proxy:
        mine, other = await issue_key(proxy.api), await issue_key(proxy.api)
        engine = create_engine(database_url)
        try:
            for kind, subject in (("key", mine["id"]), ("key", other["id"]), ("user", "ann")):
                await flag(engine, kind, subject)
        finally:
            await engine.dispose()
        as_key = {"Authorization": f"Bearer {mine['key']}"}
        seen = (await proxy.api.get("/usage/anomalies", headers=as_key)).json()["data"]
        users = await proxy.api.get("/usage/anomalies", params={"kind": "user"}, headers=as_key)
        everything = (await proxy.api.get("/usage/anomalies", headers=ADMIN)).json()["data"]
    assert [(a["kind"], a["subject"]) for a in seen] == [("key", mine["id"])]
    assert users.status_code == 200 and users.json()["data"] == []
    assert len(everything) == 3
