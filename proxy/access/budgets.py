"""Budgets on the request path: which budgets a request counts against, and its reservation.

A request is refused (429 ``budget_exceeded``) before it reaches the provider when its
reservation does not fit a budget: the input counted locally plus ``max_tokens`` (or
``max_completion_tokens`` / ``max_output_tokens``; without one, the most the model can
write) at the model's prices. Before that, a budget's actions may send a cheaper model or
refuse early (``proxy.spend.decide``), from the usage this replica knows. The database
decides atomically (``proxy.store.budgets``), so replicas sharing one Postgres agree. The
record writer settles the real usage. Definitions are cached and refreshed in the
background, so a request no budget applies to costs no database call; the same background
task releases stale reservations and checks alert thresholds (``proxy.access.alerts``).
While the database is unavailable, reservations are decided from the last known usage
(``proxy.access.outage``): a request is never refused with a 500 for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from proxy.access.outage import OutageLedger
from proxy.errors import BudgetExceeded
from proxy.pricing import PriceBook
from proxy.records import Exchange
from proxy.spend.budget import Budget, Hold, budget_of
from proxy.spend.decide import KEEP, Decision, decide
from proxy.spend.limits import max_output_tokens
from proxy.spend.periods import period_start
from proxy.store.availability import DATABASE_ERRORS, DECISION_TIMEOUT
from proxy.tokens import TokenCounter
from proxy.usage import Usage

if TYPE_CHECKING:
    from proxy.access.alerts import Alerter
    from proxy.store.budgets import BudgetStore

log = logging.getLogger(__name__)

OUTPUT_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def output_limit(body: dict[str, Any] | None) -> int:
    """The most output tokens the request allows itself; 0 when it names no limit."""
    for name in OUTPUT_LIMIT_FIELDS:
        value = (body or {}).get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


@dataclass(frozen=True, slots=True)
class HoldRules:
    """``budgets:`` in the config: how holds are sized when a request leaves them open."""

    default_max_output_tokens: int = 4096
    unpriced: Literal["refuse", "allow"] = "refuse"


@dataclass(frozen=True, slots=True)
class Estimate:
    hold: Hold
    priced: bool
    """False when the model has no price: the hold carries no money."""


def writes_output(endpoint: str) -> bool:
    """Whether the endpoint generates tokens (embeddings and moderations write none)."""
    return (
        endpoint.endswith(_GENERATING)
        or ":generateContent" in endpoint
        or (":streamGenerateContent" in endpoint)
    )


_GENERATING = ("/chat/completions", "/completions", "/responses", "/messages")


def output_reservation(exchange: Exchange, rules: HoldRules) -> int:
    """The output a request may write: its own limit, else the model's maximum from the
    model table, else ``default_max_output_tokens``; never less than it could write."""
    limit = output_limit(exchange.request_body)
    if limit or not writes_output(exchange.endpoint):
        return limit
    known = max_output_tokens(exchange.model) if exchange.model else None
    return known or rules.default_max_output_tokens


def estimate_hold(
    exchange: Exchange, counter: TokenCounter, prices: PriceBook, rules: HoldRules
) -> Estimate:
    """The reservation of a request: its input counted locally, its output at the most it
    may write (``output_reservation``).

    Runs in a worker thread (tokenizing is CPU work). A model without a price reserves no
    money, only tokens; ``Budgets.reserve`` decides whether that is allowed.
    """
    body = exchange.request_body
    try:
        prompt = counter.prompt_tokens(exchange.endpoint, body) if body else None
    except Exception:
        # A counting bug must not refuse the request: reserve the output limit only.
        log.exception("token estimate for a budget reservation failed")
        prompt = None
    completion = output_reservation(exchange, rules)
    usage = Usage(
        prompt_tokens=prompt or 0,
        completion_tokens=completion,
        total_tokens=(prompt or 0) + completion,
    )
    cost = prices.cost(exchange.model, usage, provider=exchange.provider, at=exchange.created_at)
    hold = Hold(Decimal(0) if cost is None else cost.usd, usage.total_tokens)
    return Estimate(hold, priced=cost is not None)


def unpriced_refusal(exchange: Exchange, budgets: Sequence[Budget]) -> str | None:
    """Why a request for a model without a price cannot be held against these budgets, or
    None when none of them limits money."""
    limited = next((budget for budget in budgets if budget.limit_usd is not None), None)
    if limited is None:
        return None
    return (
        f"{limited.describe()} limits spend in USD, and model {exchange.model!r} has no price "
        "to reserve it at; add a price for it under prices: in the config, or set "
        "budgets.unpriced: allow to let such requests through unreserved"
    )


class Budgets:
    """The cached budget definitions and the reservation step of the forwarder."""

    def __init__(
        self,
        store: BudgetStore,
        counter: TokenCounter,
        prices: PriceBook,
        *,
        refresh_seconds: float = 5.0,
        alerter: Alerter | None = None,
        outage_allowance: float = 0.0,
        reserve_timeout: float = DECISION_TIMEOUT,
        rules: HoldRules = HoldRules(),
    ) -> None:
        self.store = store
        self.counter = counter
        self.prices = prices
        self.refresh_seconds = refresh_seconds
        self.alerter = alerter
        self._budgets: tuple[Budget, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self.ledger = OutageLedger(outage_allowance)
        self.reserve_timeout = reserve_timeout
        self.rules = rules

    async def start(self) -> None:
        """Read the definitions (later, when the database is unavailable now) and keep them
        fresh in the background."""
        try:
            await self.refresh()
        except DATABASE_ERRORS as exc:
            log.debug("budget definitions not read yet (%s): the database is unavailable", exc)
        self._task = asyncio.create_task(self._maintain(), name="tallyproxy-budgets")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.alerter is not None:
            await self.alerter.close()

    async def refresh(self) -> None:
        """Read the definitions again (after a change on this replica, or periodically)."""
        self._budgets = tuple(budget_of(row) for row in await self.store.definitions())
        self.ledger.begin_read()
        try:
            usage = await self.store.usage(self._budgets, datetime.now(UTC))
        except BaseException:
            self.ledger.read_failed()
            raise
        self.ledger.end_read(usage)

    def matching(self, exchange: Exchange) -> list[Budget]:
        return [
            b
            for b in self._budgets
            if b.applies(exchange.key_id, exchange.user_id, exchange.session_id)
        ]

    def act(self, exchange: Exchange) -> Decision:
        """The budget action for the request (downgrade, refuse early), decided from the
        usage this replica already knows: no database call."""
        if not self._budgets:
            return KEEP
        budgets = [budget for budget in self.matching(exchange) if budget.actions]
        if not budgets:
            return KEEP
        used = {
            budget.id: self.ledger.used(
                (budget.id, period_start(budget.period, exchange.created_at))
            )
            for budget in budgets
        }
        return decide(exchange.model, budgets, used)

    async def reserve(self, exchange: Exchange) -> None:
        """Reserve the request's estimate on every budget it counts against, or raise
        ``BudgetExceeded`` naming the first that it would exceed."""
        if not self._budgets:
            return
        budgets = self.matching(exchange)
        if not budgets:
            return
        estimate = await asyncio.to_thread(
            estimate_hold, exchange, self.counter, self.prices, self.rules
        )
        if not estimate.priced and self.rules.unpriced == "refuse" and _billable(exchange):
            refusal = unpriced_refusal(exchange, budgets)
            if refusal is not None:
                raise BudgetExceeded(refusal)
        hold = estimate.hold
        try:
            await asyncio.wait_for(
                self.store.reserve(exchange.id, budgets, hold, exchange.created_at),
                self.reserve_timeout,
            )
        except DATABASE_ERRORS as exc:  # a timeout too
            # The database's boundary: decide from the last known usage instead.
            if not self.ledger.in_outage:
                log.warning(
                    "budget reservations fail (%s: %s); deciding from the last known usage, "
                    "up to %s of each limit per budget until the database is back",
                    type(exc).__name__,
                    str(exc)[:200],
                    f"{float(self.ledger.allowance):.1%}",
                )
            self.ledger.admit(budgets, hold, exchange.created_at)
            return
        if self.ledger.in_outage:
            log.warning(
                "budget reservations work again; %d requests were admitted from memory",
                self.ledger.admitted_total,
            )
        self.ledger.reserved(budgets, hold, exchange.created_at)

    async def _maintain(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
                released = await self.store.release_expired(datetime.now(UTC))
                if released:
                    log.info("released %d stale budget reservations", released)
                if self.alerter is not None:
                    await self.alerter.check(datetime.now(UTC))
                failing = False
            except Exception as exc:
                # The background boundary: keep the cached definitions and try again later;
                # said once, not every few seconds for as long as the database is away.
                if not failing:
                    log.warning("budget refresh failed: %s", exc)
                failing = True


def _billable(exchange: Exchange) -> bool:
    """A request that names a model and is sent with POST: one the provider may bill."""
    return exchange.model is not None and exchange.method.upper() == "POST"
