"""Costs seen by the caller at once: headers, the stream's tally comment, prices, repricing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

MESSAGES = [{"role": "user", "content": "Hi"}]
# gpt-4o-mini, from OpenAI's pricing page: $0.15 / 1M input, $0.075 / 1M cached input,
# $0.60 / 1M output.
MINI_USAGE = FakeUsage(prompt_tokens=1000, cached_tokens=200, completion_tokens=500)
MINI_COST = (800 * Decimal("0.15") + 200 * Decimal("0.075") + 500 * Decimal("0.60")) / 10**6


def _tally(text: str) -> dict[str, object]:
    (line,) = [line for line in text.splitlines() if line.startswith(": tally ")]
    tally: dict[str, object] = json.loads(line[len(": tally ") :])
    return tally


async def test_json_answer_carries_its_cost(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = MINI_USAGE
    raw = await proxy.sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Session-Id": "priced"}
    )
    assert Decimal(raw.headers["x-tally-cost-usd"]) == MINI_COST == Decimal("0.000435")
    record = await proxy.record(raw.headers["x-tally-request-id"])
    assert Decimal(record["cost_usd"]) == MINI_COST
    assert record["price_source"] == "genai-prices" and record["price_version"]
    session = (await proxy.api.get("/usage/sessions/priced")).json()
    assert Decimal(session["cost_usd"]) == MINI_COST and session["unpriced_requests"] == 0
    summary = (await proxy.api.get("/usage/summary", params={"group_by": "model"})).json()
    assert Decimal(summary["data"][0]["cost_usd"]) == MINI_COST


async def test_stream_ends_with_a_tally_comment(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = MINI_USAGE
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    async with httpx.AsyncClient(base_url=sqlite_proxy.base_url) as client:
        response = await client.post("/chat/completions", json=body)
    tally = _tally(response.text)
    assert tally["request_id"] == response.headers["x-tally-request-id"]
    assert tally["total_tokens"] == 1500 and tally["usage_source"] == "provider"
    assert Decimal(str(tally["cost_usd"])) == MINI_COST
    # The comment sits just before [DONE], and the client still sees no usage chunk.
    assert response.text.index(": tally ") < response.text.index("data: [DONE]")
    assert '"usage"' not in response.text.split(": tally ")[0]


async def test_sdks_ignore_the_tally_comment(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    stream = await sqlite_proxy.sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake_upstream.reply

    async with (
        anthropic.AsyncAnthropic(
            base_url=sqlite_proxy.url, api_key="sk-ant-test", max_retries=0
        ) as client,
        client.messages.stream(
            model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as messages,
    ):
        streamed = "".join([piece async for piece in messages.text_stream])
        final = await messages.get_final_message()
    assert streamed == fake_upstream.reply
    assert final.usage.output_tokens == fake_upstream.usage.completion_tokens
    records = await sqlite_proxy.records(2)
    assert {r["usage_source"] for r in records} == {"provider"}


async def test_unknown_model_costs_null_never_zero(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    raw = await proxy.sdk.chat.completions.with_raw_response.create(
        model="my-private-model", messages=MESSAGES, extra_headers={"X-Session-Id": "dark"}
    )
    assert "x-tally-cost-usd" not in raw.headers
    assert raw.headers["x-tally-total-tokens"] == str(fake_upstream.usage.total_tokens)
    record = await proxy.record(raw.headers["x-tally-request-id"])
    assert record["cost_usd"] is None and record["price_source"] is None
    session = (await proxy.api.get("/usage/sessions/dark")).json()
    assert session["cost_usd"] is None and session["unpriced_requests"] == 1


async def test_config_prices_and_the_prices_endpoint(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/p.db",
        prices=[
            {"model": "qwen-max", "input": "1.6", "output": "6.4"},
            {"model": "llama-*", "input": "0", "output": "0"},
            {"model": "prod-4o", "alias": "gpt-4o-mini"},
        ],
    )
    fake_upstream.usage = FakeUsage(prompt_tokens=1000, completion_tokens=500)
    async with start_proxy(settings) as proxy:
        costs = {}
        for model in ("qwen-max", "llama-3.1-8b", "prod-4o"):
            raw = await proxy.sdk.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES
            )
            costs[model] = Decimal(raw.headers["x-tally-cost-usd"])
        assert costs["qwen-max"] == (1000 * Decimal("1.6") + 500 * Decimal("6.4")) / 10**6
        assert costs["llama-3.1-8b"] == 0
        assert costs["prod-4o"] == (1000 * Decimal("0.15") + 500 * Decimal("0.6")) / 10**6

        described = (await proxy.api.get("/usage/prices", params={"model": "qwen-max"})).json()
        assert described["source"] == "config"
        assert Decimal(described["usd_per_million"]["input"]) == Decimal("1.6")
        listed = (await proxy.api.get("/usage/prices", params={"model": "gpt-4o"})).json()
        assert listed["source"] == "genai-prices"
        missing = await proxy.api.get("/usage/prices", params={"model": "nobody-knows"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "unknown_price"
        assert (await proxy.api.get("/usage/prices")).status_code == 400


async def test_reprice_after_a_price_change(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=1000, completion_tokens=1000)
    old = proxy_settings(
        fake_upstream.base_url, database_url, prices=[{"model": "house-*", "input": 1, "output": 2}]
    )
    async with start_proxy(old) as proxy:
        for model in ("house-a", "house-a", "house-b", "gpt-4o-mini"):
            await proxy.sdk.chat.completions.create(
                model=model, messages=MESSAGES, extra_headers={"X-Session-Id": "rp"}
            )
        await proxy.records(4)

    config = tmp_path / "new-prices.yaml"
    config.write_text("prices:\n  - model: house-a\n    input: 2\n    output: 4\n")
    command = [sys.executable, "-m", "proxy", "reprice", "--config", str(config)]
    command += ["--database-url", database_url, "--since", "1h"]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "4 records examined, changed 3" in done.stdout
    assert "house-a" in done.stdout and "house-b" in done.stdout

    async with start_proxy(old) as proxy:
        records = await proxy.records(4)
        costs = sorted((r["model"], r["cost_usd"]) for r in records)
        session = (await proxy.api.get("/usage/sessions/rp")).json()
    # house-a now 2/4 per 1M: 0.006 each; house-b has no price any more; gpt-4o-mini unchanged.
    assert costs == [
        ("gpt-4o-mini", "0.00075"),
        ("house-a", "0.006"),
        ("house-a", "0.006"),
        ("house-b", None),
    ]
    assert Decimal(session["cost_usd"]) == Decimal("0.01275")
    assert session["unpriced_requests"] == 1


def test_reprice_dry_run_on_an_empty_database(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    # reprice refuses a file that does not exist yet: migrate makes the empty database.
    migrate = [sys.executable, "-m", "proxy", "migrate", "--database-url", database]
    subprocess.run(migrate, capture_output=True, check=True, timeout=120)
    command = [sys.executable, "-m", "proxy", "reprice", "--database-url", database]
    command += ["--since", "2026-01-01", "--dry-run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0 records examined, would change 0" in done.stdout


async def test_session_cost_header_is_the_running_total(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = MINI_USAGE
    seen = []
    for _ in range(3):
        raw = await proxy.sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Session-Id": "running"}
        )
        seen.append(Decimal(raw.headers["x-tally-session-cost-usd"]))
    # Stored or still on its way to the database, every earlier request counts exactly once.
    assert seen == [MINI_COST, 2 * MINI_COST, 3 * MINI_COST]
    await proxy.records(3)
    async with httpx.AsyncClient(base_url=proxy.base_url) as client:
        response = await client.post(
            "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
            headers={"X-Session-Id": "running"},
        )
    assert Decimal(str(_tally(response.text)["session_cost_usd"])) == 4 * MINI_COST
    raw = await proxy.sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert "x-tally-session-cost-usd" not in raw.headers
