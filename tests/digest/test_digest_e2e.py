"""The daily digest end to end: records through a running proxy with the openai SDK, then
``tallyproxy digest`` mails it over STARTTLS to a real SMTP server and posts it, signed, to
a local receiver; the scheduled job sends it once however many replicas run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from proxy.cli import main
from proxy.store.engine import create_engine
from proxy.store.rows import write_records
from proxy.store.tables import digest_runs
from proxy.usage import Usage
from tests.access.conftest import ADMIN, ADMIN_TOKEN, UPSTREAM_KEY
from tests.digest.receiver import Receiver
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.store.factory import make_record
from tests.support.fake_upstream import FakeUpstream, FakeUsage
from tests.support.servers import run_asgi_server_async
from tests.support.smtp_server import run_smtp_server

MODEL = "digest-model"
FREE_MODEL = "digest-unpriced-model"
# $100 / 1M input, $1000 / 1M output: the fake's answer (19 in, 10 out) costs $0.0119.
PRICES = [{"model": MODEL, "input": 100, "output": 1000}]
COST = Decimal("0.0119")
SECRET = "whsec-digest"
SMTP_USER, SMTP_PASSWORD = "tally", "smtp-secret-pw"
MESSAGES = [{"role": "user", "content": "hi"}]


def earlier(day_offset: int, **fields: Any) -> Any:
    """A record of ``day_offset`` days ago, at noon UTC, of 29 tokens."""
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    usage = Usage(prompt_tokens=19, completion_tokens=10, total_tokens=29)
    return make_record(created_at=noon - timedelta(days=day_offset), usage=usage, **fields)


async def _traffic(proxy: Any) -> list[Any]:
    """Today: three priced requests of ann for the support chat, one unpriced of bob."""
    answers = []
    for _ in range(3):
        answers.append(
            await proxy.sdk.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=10,
                user="ann",
                extra_headers={"X-Property-App": "support-chat"},
            )
        )
    answers.append(
        await proxy.sdk.chat.completions.create(model=FREE_MODEL, messages=MESSAGES, user="bob")
    )
    return answers


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_the_digest_is_mailed_and_posted_with_the_numbers_of_the_records(
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    database: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=19, completion_tokens=10)
    database_url = (
        f"sqlite+aiosqlite:///{tmp_path}/t.db"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    receiver = Receiver(SECRET)
    settings = proxy_settings(
        fake_upstream.base_url, database_url, upstream__api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN, prices=PRICES, access__allow_anonymous=True,
    )  # fmt: skip
    with run_smtp_server(tmp_path, SMTP_USER, SMTP_PASSWORD) as (port, mailbox, ca_file):
        async with run_asgi_server_async(receiver.app) as hook_url, start_proxy(settings) as proxy:
            proxy.api.headers.update(ADMIN)
            budget = {"scope": "user", "subject": "ann", "period": "day", "tokens": 100,
                      "name": "ann-daily"}  # fmt: skip
            assert (await proxy.api.post("/admin/budgets", json=budget)).status_code == 201
            answers = await _traffic(proxy)
            await proxy.records(4)
            engine = create_engine(database_url)
            try:  # the day before and the week before, written as the writer writes them
                await write_records(engine, [
                    earlier(1, model=MODEL, user_id="ann", properties={"app": "support-chat"},
                            cost_usd=COST),
                    earlier(1, model=MODEL, user_id="ann", properties={"app": "support-chat"},
                            cost_usd=COST),
                    earlier(7, model=MODEL, user_id="ann", cost_usd=COST),
                ])  # fmt: skip
            finally:
                await engine.dispose()
            config = tmp_path / "digest.yaml"
            config.write_text(yaml.safe_dump({
                "database": {"url": database_url},
                "alerts": {"webhook_secret": SECRET},
                "digest": {
                    "webhook_url": f"{hook_url}/hook",
                    "smtp": {"host": "127.0.0.1", "port": port, "user": SMTP_USER,
                             "password_env": "TEST_DIGEST_SMTP_PASSWORD",
                             "from": "tally@example.com",
                             "to": ["ops@example.com", "cfo@example.com"], "ca_file": str(ca_file)},
                },
            }))  # fmt: skip
            monkeypatch.setenv("TEST_DIGEST_SMTP_PASSWORD", SMTP_PASSWORD)
            today = datetime.now(UTC).date().isoformat()
            argv = ["digest", "--config", str(config), "--day", today]
            assert await asyncio.to_thread(main, argv) == 0
            (posted,) = await receiver.wait(1)
    assert receiver.bad_signatures == 0

    tokens = sum(a.usage.total_tokens for a in answers)  # what the SDK was told
    assert tokens == 116
    assert posted["type"] == "digest.daily" and posted["day"] == today
    assert posted["totals"] == {"requests": 4, "total_tokens": tokens, "cost_usd": "0.0357",
                                "unpriced_requests": 1}  # fmt: skip
    assert posted["day_before"]["total_tokens"] == 58 and posted["week_before"]["requests"] == 1
    assert posted["change_percent"]["day"] == {"requests": "100", "tokens": "100",
                                               "cost_usd": "50"}  # fmt: skip
    assert posted["change_percent"]["week"]["tokens"] == "300"
    drivers = posted["drivers"]
    assert [(d["key"], d["tokens_delta"], d["cost_delta_usd"]) for d in drivers["user"]] == [
        ("ann", 29, "0.0119"), ("bob", 29, "0")
    ]  # fmt: skip
    assert drivers["property"][0]["key"] == "app=support-chat"
    assert drivers["property"][0]["total_tokens"] == 87
    assert {d["key"] for d in drivers["model"]} == {MODEL, FREE_MODEL}
    assert [(b["name"], b["percent"], b["unit"]) for b in posted["budgets"]] == [
        ("ann-daily", "87", "tokens")
    ]
    assert [day["total_tokens"] for day in posted["last_days"]][-2:] == [58, 116]

    (message,) = mailbox.messages
    assert mailbox.tls == [True] and mailbox.logins == [SMTP_USER]
    assert mailbox.recipients == [["ops@example.com", "cfo@example.com"]]
    assert message["From"] == "tally@example.com"
    assert message["Subject"] == f"tallyproxy {today}: 116 tokens, $0.04, +100.0% on the day"
    _check_parts(message)


def _check_parts(message: EmailMessage) -> None:
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    text, page = plain.get_content(), html.get_content()
    for shown in (text, page):
        assert "+100.0%" in shown and "+300.0%" in shown and "+50.0%" in shown
        assert "$0.04" in shown  # 0.0357 to the cent
        assert "Unpriced requests: 1" in shown
        assert "app=support-chat: 87 tokens (+29), $0.04 (+$0.01)" in shown
        assert "ann-daily: 87.0% (87 of 100 tokens" in shown
    assert "Requests                 4" in text
    assert page.count('style="background:#4a7bd0') == 2  # bars for yesterday and today


async def test_one_replica_sends_the_scheduled_digest(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    receiver = Receiver(SECRET)
    database_url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    async with run_asgi_server_async(receiver.app) as hook_url:
        settings = proxy_settings(
            fake_upstream.base_url, database_url, digest__at="00:00",
            digest__webhook_url=f"{hook_url}/hook", digest__webhook_secret=SECRET,
        )  # fmt: skip
        async with start_proxy(settings), start_proxy(settings):
            await receiver.wait(1)
            await asyncio.sleep(1.0)  # the other replica has had its go too
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert [body["day"] for body in receiver.bodies] == [yesterday]
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(select(digest_runs))).mappings().all()
    finally:
        await engine.dispose()
    assert len(rows) == 1 and rows[0]["delivered_at"] is not None
