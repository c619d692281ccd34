"""Finding anomalies off the request path: every ``anomalies.interval_seconds`` each replica
reads the current window and the baseline days from the rollups, stores what ``detect``
finds (once per subject and window, across replicas) and sends the webhook for what it
stored itself.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from proxy.anomalies.detect import Observation, detect
from proxy.job_settings import AnomalySettings
from proxy.store.anomalies import AnomalyStore, anomaly_json, window_start
from proxy.webhooks import Webhook

log = logging.getLogger(__name__)


def anomaly_body(row: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "usage.anomaly", "anomaly": anomaly_json(row)})


class AnomalyJob:
    def __init__(
        self, settings: AnomalySettings, store: AnomalyStore, webhook: Webhook | None
    ) -> None:
        self.settings = settings
        self.store = store
        self.webhook = webhook
        self._deliveries: set[asyncio.Task[None]] = set()
        # The baseline windows end where the current one starts, so they are read once per
        # window, not once per check (7 days of a thousand users are ~70,000 user-hours).
        self._history: dict[str, tuple[datetime, list[Observation]]] = {}

    async def check(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Detect and store the anomalies of the current window; the rows this replica stored."""
        now = now or datetime.now(UTC)
        hours = self.settings.window_hours
        start = window_start(now, hours)
        since = start - timedelta(days=self.settings.baseline_days)
        end = start + timedelta(hours=hours)
        stored = []
        for kind in self.settings.subjects:
            history = await self._baseline(kind, since, start, hours)
            known = await self.store.known(kind, start)
            current = [
                o
                for o in await self.store.observations(kind, start, end, hours)
                if o.subject not in known
            ]
            k = Decimal(str(self.settings.k))
            found = await asyncio.to_thread(
                detect, current, history, k=k, min_peers=self.settings.min_peers
            )
            for anomaly in found:
                o = anomaly.observation
                top = await self.store.top_requests(
                    kind, o.subject, start, end, self.settings.top_requests
                )
                row = await self.store.claim(anomaly, hours, top, now)
                if row is not None:
                    log.warning(
                        "anomaly: %s %r spent %s USD, %d tokens from %s (peers' median %s)",
                        kind, o.subject, o.cost_usd, o.total_tokens, start.isoformat(),
                        {e.measure: str(e.baseline.median) for e in anomaly.exceeded},
                    )  # fmt: skip
                    stored.append(row)
                    self._send(row)
        return stored

    async def _baseline(
        self, kind: str, since: datetime, start: datetime, hours: int
    ) -> list[Observation]:
        cached = self._history.get(kind)
        if cached is None or cached[0] != start:
            cached = (start, await self.store.observations(kind, since, start, hours))
            self._history[kind] = cached
        return cached[1]

    def _send(self, row: dict[str, Any]) -> None:
        if self.webhook is None:
            return
        task = asyncio.create_task(self._deliver(self.webhook, row))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, webhook: Webhook, row: dict[str, Any]) -> None:
        what = f"anomaly of {row['kind']} {row['subject']!r}"
        if await webhook.deliver(anomaly_body(row), what):
            await self.store.mark_delivered(row["id"], datetime.now(UTC))

    async def close(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self.webhook is not None:
            await self.webhook.close()
