"""The background jobs of a replica beside the request path: anomaly detection and the
daily digest, made from the settings, started and stopped by the app's lifespan."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.anomalies.job import AnomalyJob
from proxy.config import Settings
from proxy.digest.job import CHECK_SECONDS, DigestJob
from proxy.periodic import Periodic
from proxy.store.anomalies import AnomalyStore
from proxy.store.availability import DATABASE_ERRORS
from proxy.store.budgets import BudgetStore
from proxy.store.digests import DigestStore
from proxy.webhooks import Webhook


def _webhook(settings: Settings, url: str | None, secret: str | None) -> Webhook | None:
    if url is None:
        return None
    return Webhook(
        url,
        secret if secret is not None else settings.alerts.webhook_secret,
        max_attempts=settings.alerts.max_attempts,
        retry_seconds=settings.alerts.retry_seconds,
    )


def digest_webhook(settings: Settings) -> Webhook | None:
    """The digest's receiver; signed with ``digest.webhook_secret`` or the alerts' secret."""
    return _webhook(settings, settings.digest.webhook_url, settings.digest.webhook_secret)


def anomaly_webhook(settings: Settings) -> Webhook | None:
    anomalies = settings.anomalies
    return _webhook(settings, anomalies.webhook_url, anomalies.webhook_secret)


class BackgroundJobs:
    """The jobs the settings turn on, each in its own ``Periodic`` loop."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.anomalies: AnomalyJob | None = None
        self.digest: DigestJob | None = None
        self._loops: list[Periodic] = []
        if settings.anomalies.enabled:
            self.anomalies = AnomalyJob(
                settings.anomalies, AnomalyStore(engine), anomaly_webhook(settings)
            )
            self._loops.append(
                Periodic(
                    "anomaly detection",
                    self.anomalies.check,
                    settings.anomalies.interval_seconds,
                    expected=DATABASE_ERRORS,
                )
            )
        if settings.digest.enabled:
            self.digest = DigestJob(
                settings.digest, DigestStore(engine), BudgetStore(engine), digest_webhook(settings)
            )
            self._loops.append(
                Periodic(
                    "daily digest", self.digest.run_due, CHECK_SECONDS, expected=DATABASE_ERRORS
                )
            )

    def start(self) -> None:
        for loop in self._loops:
            loop.start()

    async def stop(self) -> None:
        for loop in self._loops:
            await loop.stop()
        for job in (self.anomalies, self.digest):
            if job is not None:
                await job.close()
