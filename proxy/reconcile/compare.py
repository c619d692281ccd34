"""The provider's report beside tallyproxy's totals: pure, rows in, a comparison out.

Rows are keyed by bucket (day or hour), model and, when the config names the provider's ids
of the keys tallyproxy holds (``reconcile.providers.<name>.keys``), by that key: the
provider's traffic on a held key is compared with the records of the upstream holding it,
and what the provider saw beyond them is *bypass* (traffic that went around the proxy with
its key). Traffic on other keys is compared, as one scope, with the records of upstreams
holding no named key (pass-through clients bring their own keys). Without named keys the
whole organisation is compared with every upstream of the provider.

Models are compared by family: the provider reports the snapshot that answered
("gpt-4o-2024-08-06"), a record the name asked for ("gpt-4o"), so a date suffix is dropped
on both sides.

Costs are per day: OpenAI's costs by project and line item, Anthropic's by workspace and
model. They are set beside the day's totals and, without named keys, beside each model's row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final, Literal

from proxy.reconcile.reports import BucketWidth, CostRow, Provider, UsageRow

MEASURES: Final = ("requests", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd")
OTHER_KEYS: Final = "(other keys)"
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
WIDTHS: Final = {"1d": timedelta(days=1), "1h": timedelta(hours=1)}


@dataclass(frozen=True, slots=True)
class LocalCell:
    """tallyproxy's totals for one bucket, upstream (URL) and model, from the rollups."""

    start: datetime
    upstream: str
    model: str | None
    requests: int
    failed_requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    unpriced_requests: int


@dataclass(slots=True)
class Totals:
    """Requests, tokens and cost on one side; None where that side does not say."""

    requests: int | None = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None

    def add_usage(self, row: UsageRow) -> None:
        self.requests = (
            None
            if row.requests is None or self.requests is None
            else (self.requests + row.requests)
        )
        self.input_tokens += row.input_tokens
        self.cached_input_tokens += row.cached_input_tokens
        self.output_tokens += row.output_tokens

    def add_cost(self, amount: Decimal) -> None:
        self.cost_usd = amount if self.cost_usd is None else self.cost_usd + amount

    def add_local(self, cell: LocalCell) -> None:
        self.requests = (self.requests or 0) + cell.requests - cell.failed_requests
        self.input_tokens += cell.input_tokens
        self.cached_input_tokens += cell.cached_input_tokens
        self.output_tokens += cell.output_tokens
        if cell.requests > cell.unpriced_requests:
            self.add_cost(cell.cost_usd)


@dataclass(frozen=True, slots=True)
class Difference:
    """Provider minus tallyproxy, and that as a share of the provider's figure."""

    absolute: int | Decimal | None
    relative: Decimal | None


@dataclass(slots=True)
class ComparisonRow:
    """One bucket, model and key scope: both sides, their differences, and bypass."""

    start: datetime
    end: datetime
    model: str | None
    api_key_id: str | None
    project_id: str | None
    held: bool
    provider: Totals = field(default_factory=Totals)
    local: Totals = field(default_factory=Totals)
    unpriced_requests: int = 0
    seen_by_provider: bool = False

    @property
    def differences(self) -> dict[str, Difference]:
        return differences(self.provider, self.local)

    @property
    def bypass(self) -> Totals | None:
        """What the provider saw on a held key beyond the proxy's records (None: not held)."""
        if not self.held:
            return None
        return Totals(
            requests=_excess(self.provider.requests, self.local.requests),
            input_tokens=_excess(self.provider.input_tokens, self.local.input_tokens) or 0,
            cached_input_tokens=0,
            output_tokens=_excess(self.provider.output_tokens, self.local.output_tokens) or 0,
        )

    @property
    def bypassed(self) -> bool:
        bypass = self.bypass
        return bypass is not None and bool(
            bypass.requests or bypass.input_tokens or bypass.output_tokens
        )


@dataclass(slots=True)
class BucketTotals:
    """A whole bucket: every row's sums, the bill's cost, and the headline difference."""

    start: datetime
    end: datetime
    closed: bool
    provider: Totals = field(default_factory=Totals)
    local: Totals = field(default_factory=Totals)
    unpriced_requests: int = 0

    @property
    def differences(self) -> dict[str, Difference]:
        return differences(self.provider, self.local)

    @property
    def measure(self) -> Literal["cost_usd", "tokens"]:
        """What the headline compares: cost when both sides know it, else all tokens."""
        known = self.provider.cost_usd is not None and self.local.cost_usd is not None
        return "cost_usd" if known else "tokens"

    @property
    def difference_pct(self) -> Decimal | None:
        """(provider - tallyproxy) / provider in percent, of ``measure``."""
        if self.measure == "cost_usd":
            assert self.provider.cost_usd is not None and self.local.cost_usd is not None
            theirs, ours = self.provider.cost_usd, self.local.cost_usd
        else:
            theirs = Decimal(self.provider.input_tokens + self.provider.output_tokens)
            ours = Decimal(self.local.input_tokens + self.local.output_tokens)
        relative = _relative(theirs - ours, theirs)
        return None if relative is None else relative * 100


@dataclass(frozen=True, slots=True)
class Reconciliation:
    provider: Provider
    width: BucketWidth
    since: datetime
    until: datetime
    rows: tuple[ComparisonRow, ...]
    buckets: tuple[BucketTotals, ...]


def model_family(model: str | None) -> str | None:
    """The model without a snapshot date or ``-latest``: "gpt-4o-2024-08-06" -> "gpt-4o";
    Anthropic's ``-0`` aliases too ("claude-sonnet-4-0" is "claude-sonnet-4-20250514")."""
    if model is None:
        return None
    family = _DATED.sub("", model)
    return family.removesuffix("-0") if family.startswith("claude-") else family


def compare(
    provider: Provider,
    width: BucketWidth,
    since: datetime,
    until: datetime,
    usage: Iterable[UsageRow],
    costs: Iterable[CostRow],
    local: Iterable[LocalCell],
    *,
    held_keys: Mapping[str, str] | None = None,
    closed_before: datetime,
) -> Reconciliation:
    """Compare the report with the local cells over ``[since, until)`` (bucket aligned).

    ``held_keys`` maps the provider's id of each key tallyproxy holds to the URL of the
    upstream holding it; a bucket is *closed* (final) when it ends before ``closed_before``.
    """
    step = WIDTHS[width]
    by_key = dict(held_keys or {})
    upstream_keys = {url: key for key, url in by_key.items()}
    rows: dict[tuple[datetime, str | None, str | None], ComparisonRow] = {}
    buckets: dict[datetime, BucketTotals] = {}

    def bucket(start: datetime) -> BucketTotals:
        if start not in buckets:
            buckets[start] = BucketTotals(start, start + step, start + step <= closed_before)
        return buckets[start]

    def row(start: datetime, model: str | None, key: str | None) -> ComparisonRow:
        index = (start, model_family(model), key)
        if index not in rows:
            held = key is not None and key != OTHER_KEYS
            rows[index] = ComparisonRow(start, start + step, index[1], key, None, held)
        return rows[index]

    for item in usage:
        if not since <= item.start < until:
            continue
        key = _scope(item.api_key_id, by_key)
        target = row(item.start, item.model, key)
        target.provider.add_usage(item)
        target.seen_by_provider = True
        target.project_id = target.project_id or item.project_id
        bucket(item.start).provider.add_usage(item)
    for cell in local:
        if not since <= cell.start < until:
            continue
        key = upstream_keys.get(cell.upstream, OTHER_KEYS) if by_key else None
        target = row(cell.start, cell.model, key)
        target.local.add_local(cell)
        target.unpriced_requests += cell.unpriced_requests
        totals = bucket(cell.start)
        totals.local.add_local(cell)
        totals.unpriced_requests += cell.unpriced_requests
    if width == "1d":
        _add_costs(costs, since, until, rows, bucket, keyed=bool(by_key))
    ordered = sorted(rows.values(), key=lambda r: (r.start, r.model or "", r.api_key_id or ""))
    return Reconciliation(
        provider,
        width,
        since,
        until,
        tuple(ordered),
        tuple(buckets[start] for start in sorted(buckets)),
    )


def _add_costs(
    costs: Iterable[CostRow],
    since: datetime,
    until: datetime,
    rows: dict[tuple[datetime, str | None, str | None], ComparisonRow],
    bucket: Callable[[datetime], BucketTotals],
    *,
    keyed: bool,
) -> None:
    for line in costs:
        if not since <= line.start < until:
            continue
        bucket(line.start).provider.add_cost(line.amount_usd)
        if keyed:
            continue  # a key's share of a project's cost is not in the report
        target = rows.get((line.start, model_family(line.model), None))
        if target is not None:
            target.provider.add_cost(line.amount_usd)


def _scope(api_key_id: str | None, held_keys: Mapping[str, str]) -> str | None:
    if not held_keys:
        return None
    return api_key_id if api_key_id in held_keys else OTHER_KEYS


def differences(provider: Totals, local: Totals) -> dict[str, Difference]:
    """Each measure's provider minus local, absolute and relative (None where unknown)."""
    result: dict[str, Difference] = {}
    for name in MEASURES:
        theirs = getattr(provider, name)
        ours = getattr(local, name)
        if theirs is None or ours is None:
            result[name] = Difference(None, None)
            continue
        result[name] = Difference(theirs - ours, _relative(Decimal(theirs - ours), Decimal(theirs)))
    return result


def _relative(difference: Decimal, base: Decimal) -> Decimal | None:
    if base == 0:
        return Decimal(0) if difference == 0 else None
    return (difference / base).quantize(Decimal("0.000001"))


def _excess(theirs: int | None, ours: int | None) -> int | None:
    if theirs is None or ours is None:
        return None
    return max(0, theirs - ours)


def aligned(since: datetime, until: datetime, width: BucketWidth) -> tuple[datetime, datetime]:
    """``[since, until)`` widened to whole buckets (UTC days or hours)."""
    step = WIDTHS[width]

    def floor(moment: datetime) -> datetime:
        hour = moment.replace(minute=0, second=0, microsecond=0)
        return hour.replace(hour=0) if width == "1d" else hour

    start, end = floor(since), floor(until)
    return start, end if end == until else end + step


def alerting(buckets: Sequence[BucketTotals], alert_pct: Decimal) -> list[BucketTotals]:
    """The closed buckets whose headline difference reaches ``alert_pct`` either way."""
    return [
        b
        for b in buckets
        if b.closed and b.difference_pct is not None and abs(b.difference_pct) >= alert_pct
    ]
