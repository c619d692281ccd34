"""tallyproxy's side: which upstreams are a provider's, and their totals from the rollups."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import Settings
from proxy.reconcile.compare import LocalCell
from proxy.reconcile.reports import BucketWidth, Provider
from proxy.store.reconciliations import local_cells

_GRAINS = {"1d": "day", "1h": "hour"}


def provider_upstreams(settings: Settings, provider: Provider) -> list[str]:
    """The URLs of the upstreams priced as ``provider``'s: its records are theirs."""
    return sorted({r.url for r in settings.routes if r.pricing_provider == provider})


def held_keys(settings: Settings, provider: Provider) -> dict[str, str]:
    """The provider's key ids tallyproxy holds, each to the URL of the upstream holding it."""
    section = settings.reconcile.providers.get(provider)
    if section is None:
        return {}
    urls = {route.name: route.url for route in settings.routes}
    return {key.api_key_id: urls[key.upstream] for key in section.keys}


async def local_totals(
    engine: AsyncEngine,
    upstreams: Sequence[str],
    since: datetime,
    until: datetime,
    width: BucketWidth,
) -> list[LocalCell]:
    """The rollups' cells of ``upstreams`` by bucket and model over ``[since, until)``."""
    rows = await local_cells(engine, upstreams, since, until, _GRAINS[width])
    return [
        LocalCell(
            start=row["bucket_start"],
            upstream=row["upstream"],
            model=row["model"],
            requests=int(row["requests"]),
            failed_requests=int(row["error_requests"]),
            input_tokens=int(row["prompt_tokens"]),
            cached_input_tokens=int(row["cached_tokens"]),
            output_tokens=int(row["completion_tokens"]),
            cost_usd=Decimal(row["cost_usd"]),
            unpriced_requests=int(row["unpriced_requests"]),
        )
        for row in rows
    ]
