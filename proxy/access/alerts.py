"""Budget alerts: a signed JSON POST when spend crosses a threshold, once per period.

Each replica checks the budgets it caches in the background; whichever inserts the
``budget_alerts`` row for (budget, period, threshold) first sends it, so replicas never send
one alert twice. The body is signed with HMAC-SHA256 and the shared secret
(``X-Tally-Signature: sha256=<hex>``, ``proxy.signing``); failed deliveries are retried
with doubling waits (``proxy.webhooks``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from proxy.spend.forecast import within
from proxy.spend.view import budget_json, forecast
from proxy.store.availability import DATABASE_ERRORS
from proxy.store.budgets import BudgetStore
from proxy.timestamps import iso_utc
from proxy.webhooks import Webhook

log = logging.getLogger(__name__)

FORECAST_ALERT = 0
"""The threshold under which a forecast alert is claimed: thresholds proper are 1-1000 %."""


def crossed(thresholds: Sequence[int], spent: Decimal, limit: Decimal) -> list[int]:
    """The thresholds (percent of ``limit``) that ``spent`` has reached."""
    if limit <= 0:
        return list(thresholds)
    return [t for t in thresholds if spent * 100 >= limit * t]


def alert_body(status: dict[str, Any], threshold: int, fired_at: datetime) -> bytes:
    """The webhook's JSON: which budget, which threshold, and the spend that crossed it; or,
    for a forecast, when the budget runs out at its pace."""
    budget = budget_json(status, fired_at)
    if threshold == FORECAST_ALERT:
        return orjson.dumps(
            {
                "type": "budget.forecast",
                "runs_out_at": budget["runs_out_at"],
                "fired_at": iso_utc(fired_at),
                "budget": budget,
            }
        )
    return orjson.dumps(
        {
            "type": "budget.threshold",
            "threshold": threshold,
            "fired_at": iso_utc(fired_at),
            "budget": budget,
        }
    )


def _what(threshold: int) -> str:
    return "forecast" if threshold == FORECAST_ALERT else f"at {threshold}%"


class Alerter:
    """Checks budgets for crossed thresholds and delivers the alerts."""

    def __init__(
        self,
        store: BudgetStore,
        url: str,
        secret: str | None,
        *,
        max_attempts: int = 6,
        retry_seconds: float = 2.0,
        forecast_hours: float | None = None,
    ) -> None:
        self.store = store
        self.forecast_hours = forecast_hours
        self._webhook = Webhook(url, secret, max_attempts=max_attempts, retry_seconds=retry_seconds)
        self._deliveries: set[asyncio.Task[None]] = set()

    async def check(self, now: datetime) -> int:
        """Claim and send the alerts due now; returns how many this replica claimed."""
        claimed = 0
        statuses = await self.store.status(now)
        for status in statuses:
            thresholds = status["alerts"] or []
            if not thresholds:
                continue
            if status["limit_usd"] is not None:
                due = crossed(thresholds, status["spent_usd"], status["limit_usd"])
            else:
                due = crossed(
                    thresholds, Decimal(status["spent_tokens"]), Decimal(status["limit_tokens"])
                )
            for threshold in due:
                claimed += await self._claim(status, threshold, now)
        if self.forecast_hours is not None:
            for status in statuses:
                if within(forecast(status, now), now, self.forecast_hours):
                    claimed += await self._claim(status, FORECAST_ALERT, now)
        return claimed

    async def _claim(self, status: dict[str, Any], threshold: int, now: datetime) -> int:
        """Send the alert if this replica is the first to claim it; 1 when it was."""
        if not await self.store.claim_alert(status["id"], status["period_start"], threshold):
            return 0
        task = asyncio.create_task(self._deliver(status, threshold, now))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return 1

    async def _deliver(self, status: dict[str, Any], threshold: int, now: datetime) -> None:
        what = f"budget alert for {status['name']} {_what(threshold)}"
        if not await self._webhook.deliver(alert_body(status, threshold, now), what):
            return
        try:
            await self.store.mark_delivered(status["id"], status["period_start"], threshold)
        except DATABASE_ERRORS as exc:
            # Sent, and claimed, so never sent twice; only the delivery time is lost.
            log.warning("budget alert delivery not recorded: %s", exc)

    async def close(self) -> None:
        """Stop deliveries still retrying and close the HTTP session."""
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        await self._webhook.close()
