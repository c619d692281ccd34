"""Gathering and sending the digest: figures from the rollups, budgets and anomalies, then
the webhook and the mail; once a day at ``digest.at`` from the replica that claims the day.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta

from proxy.digest import render
from proxy.digest.content import DIMENSIONS, Digest, build_digest, near_limit
from proxy.digest.mail import mail_digest
from proxy.job_settings import DigestSettings
from proxy.store.budgets import BudgetStore
from proxy.store.digests import DigestStore
from proxy.webhooks import Webhook

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0


def due_day(now: datetime, send_time: tuple[int, int]) -> date | None:
    """The day whose digest is due at ``now``: yesterday once today's send time has come."""
    now = now.astimezone(UTC)
    if now.time() < time(*send_time):
        return None
    return now.date() - timedelta(days=1)


class DigestJob:
    """Builds digests and delivers them to the configured webhook and mailbox."""

    def __init__(
        self,
        settings: DigestSettings,
        store: DigestStore,
        budgets: BudgetStore,
        webhook: Webhook | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.budgets = budgets
        self.webhook = webhook
        self._done: date | None = None

    async def build(self, day: date, now: datetime) -> Digest:
        """The digest of ``day``; budgets as they stand at ``now``."""
        daily = await self.store.daily_totals(day - timedelta(days=7), day)
        breakdowns = {
            name: (
                await self.store.breakdown(name, day),
                await self.store.breakdown(name, day - timedelta(days=1)),
            )
            for name in DIMENSIONS
        }
        statuses = await self.budgets.status(now)
        return build_digest(
            day,
            daily,
            breakdowns,
            top=self.settings.top,
            budgets=near_limit(statuses, self.settings.budget_warn_percent),
            anomalies=await self.store.anomalies_of(day),
            rollups_complete=await self.store.rollups_complete(),
        )

    async def send(self, digest: Digest) -> bool:
        """Deliver to each destination; True when every one took it."""
        delivered = True
        if self.webhook is not None:
            what = f"digest for {digest.day}"
            delivered = await self.webhook.deliver(render.webhook_body(digest), what)
        if self.settings.smtp is not None:
            delivered = await mail_digest(digest, self.settings.smtp) and delivered
        return delivered

    async def run_due(self, now: datetime | None = None) -> date | None:
        """Send the due digest if this replica claims it; the day sent, else None."""
        now = now or datetime.now(UTC)
        day = due_day(now, self.settings.send_time)
        if day is None or day == self._done:
            return None
        if await self.store.claimed(day):
            self._done = day
            return None
        # Built before the claim: a database error here leaves the day to the next round
        # (or another replica) rather than claimed and never sent.
        digest = await self.build(day, now)
        claimed = await self.store.claim(day, now)
        self._done = day
        if not claimed:
            return None  # another replica claimed it meanwhile
        if await self.send(digest):
            await self.store.mark_delivered(day, datetime.now(UTC))
        return day

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.close()
