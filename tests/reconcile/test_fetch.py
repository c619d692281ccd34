"""Reading reports from the fake report server: pages, empty buckets, 429s, bad keys."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from proxy.reconcile.fetch import ReportFetcher
from proxy.reconcile.reports import MalformedReport, ReportRefused, ReportUnavailable
from tests.support.fake_reports import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    FakeReports,
    Traffic,
    run_fake_reports,
)
from tests.support.servers import free_port

DAY0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeReports]:
    with run_fake_reports() as server:
        yield server


def _traffic(fake: FakeReports, days: int = 10) -> None:
    for day in range(days):
        if day == 3:
            continue  # an empty bucket
        fake.traffic.append(
            Traffic(DAY0 + timedelta(days=day, hours=5), "gpt-4o-mini-2024-07-18", requests=2,
                    input_tokens=100, cached_input_tokens=10, output_tokens=50,
                    cost_usd=Decimal("0.001"), api_key_id=f"key_{day % 2}")
        )  # fmt: skip
        fake.traffic.append(
            Traffic(DAY0 + timedelta(days=day), "text-embedding-3-small", input_tokens=30,
                    endpoint="embeddings")
        )  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "key"), [("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY)]
)
async def test_every_page_is_read(fake: FakeReports, provider: str, key: str) -> None:
    _traffic(fake)
    fake.page_size = 3  # 10 days: 4 pages of usage, 4 of costs
    fetcher = ReportFetcher(provider, key, fake.url)  # type: ignore[arg-type]
    report = await fetcher.report(DAY0, DAY0 + timedelta(days=10), "1d")
    completions = [row for row in report.usage if row.output_tokens]
    assert len(completions) == 9
    assert {row.start for row in completions} == {
        DAY0 + timedelta(days=d) for d in range(10) if d != 3
    }
    assert sum(row.input_tokens for row in completions) == 900
    assert sum(line.amount_usd for line in report.costs) == Decimal("0.009")
    pages = [params for path, params in fake.calls if "cost" not in path]
    assert len([p for p in pages if ("page", "3") in p]) >= 1


async def test_hourly_buckets(fake: FakeReports) -> None:
    _traffic(fake, days=2)
    fetcher = ReportFetcher("openai", OPENAI_KEY, fake.url)
    report = await fetcher.report(DAY0, DAY0 + timedelta(days=2), "1h")
    starts = {row.start for row in report.usage if row.output_tokens}
    assert starts == {DAY0 + timedelta(hours=5), DAY0 + timedelta(days=1, hours=5)}


async def test_429_is_waited_out(fake: FakeReports) -> None:
    _traffic(fake, days=1)
    fake.fail_next = [(429, {"retry-after": "0.2"}), (503, {})]
    fetcher = ReportFetcher("anthropic", ANTHROPIC_KEY, fake.url)
    report = await fetcher.report(DAY0, DAY0 + timedelta(days=1), "1d")
    assert sum(row.output_tokens for row in report.usage) == 50


async def test_rate_limit_longer_than_allowed_is_an_error(fake: FakeReports) -> None:
    fake.fail_next = [(429, {"retry-after": "3600"})]
    fetcher = ReportFetcher("openai", OPENAI_KEY, fake.url)
    with pytest.raises(
        ReportUnavailable, match=r"openai: GET /v1/organization/usage/completions: HTTP 429"
    ):
        await fetcher.report(DAY0, DAY0 + timedelta(days=1), "1d")


@pytest.mark.parametrize(("provider", "call"), [
    ("openai", "GET /v1/organization/usage/completions"),
    ("anthropic", "GET /v1/organizations/usage_report/messages"),
])  # fmt: skip
async def test_bad_admin_key(fake: FakeReports, provider: str, call: str) -> None:
    fetcher = ReportFetcher(provider, "sk-wrong-secret", fake.url)  # type: ignore[arg-type]
    with pytest.raises(ReportRefused) as caught:
        await fetcher.report(DAY0, DAY0 + timedelta(days=1), "1d")
    message = str(caught.value)
    assert message.startswith(f"{provider}: {call}: HTTP 401")
    assert "sk-wrong-secret" not in message and "sk-wrong-secret" not in repr(fetcher)


async def test_malformed_page(fake: FakeReports) -> None:
    fake.fail_next = [("malformed", {})]
    fetcher = ReportFetcher("openai", OPENAI_KEY, fake.url)
    with pytest.raises(MalformedReport, match="openai: GET /v1/organization/usage/completions"):
        await fetcher.report(DAY0, DAY0 + timedelta(days=1), "1d")


async def test_provider_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fetcher = ReportFetcher("anthropic", ANTHROPIC_KEY, url, max_attempts=2)
    with pytest.raises(
        ReportUnavailable,
        match="anthropic: GET /v1/organizations/usage_report/messages: provider unreachable",
    ):
        await fetcher.report(DAY0, DAY0 + timedelta(days=1), "1d")
