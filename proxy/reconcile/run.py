"""One reconciliation: the provider's report fetched whole, compared with the rollups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import Settings
from proxy.reconcile.compare import Reconciliation, aligned, compare
from proxy.reconcile.fetch import ReportFetcher
from proxy.reconcile.local import held_keys, local_totals, provider_upstreams
from proxy.reconcile.reports import BucketWidth, Provider


class NotConfigured(ValueError):
    """The provider has no ``reconcile.providers.<name>`` section (no admin key)."""


def fetcher_for(settings: Settings, provider: Provider) -> ReportFetcher:
    """The report fetcher for ``provider`` with its admin key, or ``NotConfigured``."""
    section = settings.reconcile.providers.get(provider)
    if section is None or section.api_key is None:
        raise NotConfigured(
            f"no admin key for {provider}: add reconcile.providers.{provider}.api_key_env "
            "to the config, naming the environment variable that holds it"
        )
    return ReportFetcher(provider, section.api_key.get_secret_value(), section.url)


async def reconcile(
    settings: Settings,
    engine: AsyncEngine,
    provider: Provider,
    since: datetime,
    until: datetime | None = None,
    width: BucketWidth | None = None,
    now: datetime | None = None,
) -> Reconciliation:
    """Compare ``provider``'s report with tallyproxy's totals over ``[since, until)``, widened
    to whole buckets. Raises ``ReportError`` (nothing compared) if any page fails."""
    fetcher = fetcher_for(settings, provider)
    moment = now or datetime.now(UTC)
    bucket_width: BucketWidth = width or settings.reconcile.bucket_width
    start, end = aligned(since, until or moment, bucket_width)
    report = await fetcher.report(start, end, bucket_width)
    local = await local_totals(
        engine, provider_upstreams(settings, provider), start, end, bucket_width
    )
    settle = timedelta(hours=settings.reconcile.settle_hours)
    return compare(
        provider,
        bucket_width,
        start,
        end,
        report.usage,
        report.costs,
        local,
        held_keys=held_keys(settings, provider),
        closed_before=moment - settle,
    )
