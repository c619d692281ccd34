"""Recomputing stored costs after a price change, and saying what moved.

Each record keeps its token counts, so its cost can be computed again with today's prices.
Records, their session totals and their rollup cells change together, page by page, each
page in one transaction; totals and cells move by the difference only, so a writer adding
new records at the same time (or another replica) is never overwritten.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from sqlalchemy import Row, and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.pricing import NOTHING_CHARGED, Cost
from proxy.store.cubes import MEASURES, rollup_rows
from proxy.store.rollups import write_cells
from proxy.store.tables import TOKEN_FIELDS, requests, session_paths, sessions
from proxy.store.types import EXACT, MONEY_SCALE
from proxy.unbilled import billed_nothing
from proxy.usage import Usage

PAGE_SIZE = 1000
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)

PriceFunction = Callable[[str | None, str, Usage, datetime], Cost | None]
"""(model to price, upstream URL, usage, created at) -> cost, as the live path prices."""


@dataclass
class ModelChange:
    """What repricing did to one model's records."""

    records: int = 0
    changed: int = 0
    before: Decimal = Decimal(0)
    after: Decimal = Decimal(0)
    unpriced_before: int = 0
    unpriced_after: int = 0


@dataclass
class RepriceReport:
    examined: int = 0
    changed: int = 0
    models: dict[str, ModelChange] = field(default_factory=lambda: defaultdict(ModelChange))


@dataclass(frozen=True, slots=True)
class _Update:
    record_id: str
    session_id: str | None
    old: Decimal | None
    new: Cost | None
    row: Row[Any]


async def reprice(
    engine: AsyncEngine,
    price: PriceFunction,
    *,
    since: datetime,
    until: datetime | None = None,
    model: str | None = None,
    dry_run: bool = False,
) -> RepriceReport:
    """Reprice the records created in ``[since, until)`` (of one ``model`` if given).

    ``model`` is the model the requests named, as in every usage filter. Records without
    usage are looked at only while unpriced: those that were not billed get cost 0.
    """
    report = RepriceReport()
    after_id = ""
    while True:
        async with engine.begin() as connection:
            rows = await _page(connection, since, until, model, after_id)
            if not rows:
                return report
            after_id = rows[-1].id
            updates = [_examine(row, price, report) for row in rows]
            changed = [u for u in updates if u is not None]
            if changed and not dry_run:
                await _apply(connection, changed)


async def _page(
    connection: AsyncConnection,
    since: datetime,
    until: datetime | None,
    model: str | None,
    after_id: str,
) -> list[Row[Any]]:
    conditions = [
        requests.c.created_at >= since,
        requests.c.id > after_id,
        or_(requests.c.prompt_tokens.is_not(None), requests.c.cost_usd.is_(None)),
    ]
    if until is not None:
        conditions.append(requests.c.created_at < until)
    if model is not None:
        conditions.append(requests.c.model == model)
    query = select(requests).where(and_(*conditions)).order_by(requests.c.id).limit(PAGE_SIZE)
    return list((await connection.execute(query)).all())


def _examine(row: Row[Any], price: PriceFunction, report: RepriceReport) -> _Update | None:
    new = _new_cost(row, price)
    new_usd = None if new is None else new.usd.quantize(_QUANTUM, context=EXACT)
    old_usd: Decimal | None = row.cost_usd
    stats = report.models[row.model or "unknown"]
    report.examined += 1
    stats.records += 1
    stats.before += old_usd or 0
    stats.after += new_usd or 0
    stats.unpriced_before += old_usd is None
    stats.unpriced_after += new_usd is None
    same_source = new is not None and (new.source or None, new.version or None) == (
        row.price_source,
        row.price_version,
    )
    if new_usd == old_usd and (new is None or same_source):
        return None
    report.changed += 1
    stats.changed += 1
    quantized = (
        None if new is None else Cost(new_usd or Decimal(0), new.source, new.version, new.priced_as)
    )
    return _Update(row.id, row.session_id, old_usd, quantized, row)


def _new_cost(row: Row[Any], price: PriceFunction) -> Cost | None:
    if row.prompt_tokens is None:
        unbilled = billed_nothing(
            method=row.method,
            status_code=row.status_code,
            model=row.model,
            has_usage=False,
            endpoint=row.endpoint,
        )
        return NOTHING_CHARGED if unbilled else None
    counts: dict[str, Any] = {name: getattr(row, name) or 0 for name in TOKEN_FIELDS}
    usage = Usage(**counts)
    return price(row.response_model or row.model, row.upstream, usage, row.created_at)


async def _apply(connection: AsyncConnection, changed: list[_Update]) -> None:
    for item in changed:
        new = item.new
        await connection.execute(
            update(requests)
            .where(requests.c.id == item.record_id)
            .values(
                cost_usd=None if new is None else new.usd,
                price_source=None if new is None else new.source or None,
                price_version=None if new is None else new.version or None,
            )
        )
    deltas: dict[tuple[str, str | None], tuple[Decimal, int]] = {}
    for item in changed:
        if item.session_id is None:
            continue
        path = item.row.session_path
        for key in {(item.session_id, None), (item.session_id, None if path == "/" else path)}:
            delta, unpriced = deltas.get(key, (Decimal(0), 0))
            delta += (item.new.usd if item.new else Decimal(0)) - (item.old or Decimal(0))
            unpriced += (item.new is None) - (item.old is None)
            deltas[key] = (delta, unpriced)
    await _move_sessions(connection, deltas)
    await write_cells(connection, _rollup_difference(changed))


async def _move_sessions(
    connection: AsyncConnection, deltas: dict[tuple[str, str | None], tuple[Decimal, int]]
) -> None:
    """Move the cost of each session (path None) and of each of its path nodes."""
    for session_id, path in sorted(deltas, key=lambda key: (key[0], key[1] or "")):
        delta, unpriced = deltas[session_id, path]
        table = sessions if path is None else session_paths
        where = table.c.session_id == session_id
        if path is not None:
            where &= table.c.path == path
        new_unpriced = table.c.unpriced_requests + unpriced
        await connection.execute(
            update(table)
            .where(where)
            .values(
                unpriced_requests=new_unpriced,
                # A session none of whose requests has a price has no cost, not a cost of 0.
                cost_usd=case(
                    (new_unpriced >= table.c.requests, None),
                    else_=func.coalesce(table.c.cost_usd, 0) + delta,
                ),
            )
        )


def _rollup_difference(changed: list[_Update]) -> list[dict[str, Any]]:
    """What the repriced rows change in their cells: the new cost added, the old taken out.

    A row's cells do not depend on its cost, so the old rows and the new ones make the same
    cells in the same order, and each difference is one upsert (cost and unpriced move,
    every other measure by zero).
    """
    old_rows = [dict(item.row._mapping) for item in changed]
    new_rows = [
        {**row, "cost_usd": None if item.new is None else item.new.usd}
        for row, item in zip(old_rows, changed, strict=True)
    ]
    taken, added = rollup_rows(old_rows, sign=-1), rollup_rows(new_rows)
    with localcontext(EXACT):
        for minus, plus in zip(taken, added, strict=True):
            for name in MEASURES:
                plus[name] += minus[name]
    return added
