"""The periodic reconciliation: each ``reconcile.interval`` one replica compares the last
``lookback_days`` with each configured provider's report, stores every bucket, and sends a
signed webhook (as budget alerts do) for each closed bucket whose difference passes
``alert_pct``, once per bucket.

Which replica runs a round is decided in the database (``reconcile_runs``), which replica
sends an alert too (``reconciliations.alerted_at``). A round that fails stores nothing: the
error, naming the provider and the call, is logged and kept on the provider's schedule row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import Settings
from proxy.reconcile.compare import BucketTotals, Reconciliation, alerting
from proxy.reconcile.render import bucket_json, iso, row_json
from proxy.reconcile.reports import Provider, ReportError
from proxy.reconcile.run import reconcile
from proxy.store.availability import DATABASE_ERRORS
from proxy.store.reconciliations import ReconciliationStore
from proxy.webhooks import Webhook

log = logging.getLogger(__name__)

TICK_SECONDS = 60.0


def stored_rows(reconciliation: Reconciliation, now: datetime) -> list[dict[str, Any]]:
    """One ``reconciliations`` row per bucket: its totals, its rows, final once closed."""
    rows = []
    for bucket in reconciliation.buckets:
        members = [r for r in reconciliation.rows if r.start == bucket.start]
        pct = bucket.difference_pct
        rows.append(
            {
                "provider": reconciliation.provider,
                "bucket_width": reconciliation.width,
                "bucket_start": bucket.start,
                "bucket_end": bucket.end,
                "final": bucket.closed,
                "computed_at": now,
                "measure": bucket.measure,
                "difference_pct": None if pct is None else float(pct),
                "billed_cost_usd": bucket.provider.cost_usd if bucket.closed else None,
                "metered_cost_usd": bucket.local.cost_usd,
                "unpriced_requests": bucket.unpriced_requests,
                "bypass": any(r.bypassed for r in members),
                "comparison": {
                    "bucket": bucket_json(bucket),
                    "data": [row_json(r) for r in members],
                },
            }
        )
    return rows


def alert_body(
    provider: Provider, width: str, bucket: BucketTotals, alert_pct: Decimal, now: datetime
) -> bytes:
    return orjson.dumps(
        {
            "type": "reconciliation.difference",
            "provider": provider,
            "bucket_width": width,
            "alert_pct": str(alert_pct),
            "fired_at": iso(now),
            "bucket": bucket_json(bucket),
        }
    )


class ReconcileJob:
    """Runs the rounds in the background of ``serve``; ``run_round`` is one round."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.store = ReconciliationStore(engine)
        interval = settings.reconcile.interval or 3600.0
        self.interval = timedelta(seconds=interval)
        self.tick = min(TICK_SECONDS, interval)
        self._task: asyncio.Task[None] | None = None
        self._webhook: Webhook | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._webhook is not None:
            await self._webhook.close()

    async def _loop(self) -> None:
        while True:
            for provider in self.settings.reconcile.providers:
                try:
                    now = datetime.now(UTC)
                    if await self.store.claim_run(provider, now, self.interval):
                        await self.run_round(provider, now)
                except DATABASE_ERRORS as exc:
                    log.warning("reconciliation of %s skipped: database: %s", provider, exc)
                except Exception:  # the job's boundary: a bug must not end the rounds
                    log.exception("reconciliation of %s failed", provider)
            await asyncio.sleep(self.tick)

    async def run_round(self, provider: Provider, now: datetime) -> int:
        """Compare, store and alert; returns how many alerts this replica sent."""
        since = now - timedelta(days=self.settings.reconcile.lookback_days)
        try:
            result = await reconcile(self.settings, self.engine, provider, since, now=now)
        except ReportError as exc:
            log.error("reconciliation of %s failed, nothing stored: %s", provider, exc)
            await self.store.finish_run(provider, datetime.now(UTC), str(exc))
            return 0
        await self.store.save(stored_rows(result, now))
        await self.store.finish_run(provider, datetime.now(UTC), None)
        sent = 0
        alert_pct = self.settings.reconcile.alert_pct
        for bucket in alerting(result.buckets, alert_pct):
            if await self.store.claim_alert(provider, result.width, bucket.start, now):
                body = alert_body(provider, result.width, bucket, alert_pct, now)
                sent += await self._deliver(body)
        log.info(
            "reconciled %s: %d buckets, %d rows, %d alerts",
            provider, len(result.buckets), len(result.rows), sent,
        )  # fmt: skip
        return sent

    async def _deliver(self, body: bytes) -> int:
        alerts = self.settings.alerts
        if alerts.webhook_url is None:
            return 0
        if self._webhook is None:
            self._webhook = Webhook(
                alerts.webhook_url,
                alerts.webhook_secret,
                max_attempts=alerts.max_attempts,
                retry_seconds=alerts.retry_seconds,
            )
        return int(await self._webhook.deliver(body, "reconciliation alert"))
