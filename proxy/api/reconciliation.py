"""``GET /usage/reconciliation``: the provider's usage and cost report beside tallyproxy's
totals (admin token only: it spends the provider's admin key).

``provider`` (``openai`` | ``anthropic``), ``since`` (default 7 days ago), ``until``
(default now), ``bucket_width`` (``1d`` | ``1h``, default ``reconcile.bucket_width``);
``stored=true`` answers the comparisons the periodic job stored instead of asking the
provider (every provider's when ``provider`` is not given): what the dashboard shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import JSONResponse

from proxy.api.params import invalid_query, parse_time
from proxy.errors import InvalidRequest, ProviderReportFailed
from proxy.money import format_usd
from proxy.reconcile.compare import aligned
from proxy.reconcile.render import reconciliation_json
from proxy.reconcile.reports import ReportError
from proxy.reconcile.run import NotConfigured, reconcile
from proxy.store.queries import InvalidQuery
from proxy.store.reconciliations import ReconciliationStore
from proxy.timestamps import iso_utc


def reconciliation_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    router = APIRouter(dependencies=list(dependencies), tags=["usage"])
    router.add_api_route("/usage/reconciliation", reconciliation, methods=["GET"])
    return router


async def reconciliation(
    request: Request,
    provider: Annotated[Literal["openai", "anthropic"] | None, Query()] = None,
    since: str | None = None,
    until: str | None = None,
    bucket_width: Literal["1d", "1h"] | None = None,
    stored: bool = False,
) -> JSONResponse:
    """The comparison, as ``tallyproxy reconcile --format json`` prints it."""
    try:
        start = parse_time(since, "since")
        end = parse_time(until, "until")
    except InvalidQuery as exc:
        return invalid_query(exc)
    now = datetime.now(UTC)
    start = start or now - timedelta(days=7)
    settings = request.app.state.settings
    width = bucket_width or settings.reconcile.bucket_width
    if stored:
        return JSONResponse(await _stored(request, provider, width, start, end or now))
    if provider is None:
        raise InvalidRequest("give provider=openai or provider=anthropic", param="provider")
    try:
        result = await reconcile(settings, request.app.state.engine, provider, start, end, width)
    except NotConfigured as exc:
        raise InvalidRequest(str(exc), param="provider") from None
    except ReportError as exc:
        raise ProviderReportFailed(str(exc)) from None
    return JSONResponse(reconciliation_json(result))


async def _stored(
    request: Request, provider: str | None, width: str, since: datetime, until: datetime
) -> dict[str, Any]:
    start, end = aligned(since, until, width)  # type: ignore[arg-type]
    rows = await ReconciliationStore(request.app.state.engine).stored(provider, width, start, end)
    return {
        "provider": provider,
        "bucket_width": width,
        "since": iso_utc(start),
        "until": iso_utc(end),
        "stored": [
            {
                "provider": row["provider"],
                "bucket_start": iso_utc(row["bucket_start"]),
                "final": row["final"],
                "computed_at": iso_utc(row["computed_at"]),
                "measure": row["measure"],
                "difference_pct": row["difference_pct"],
                "billed_cost_usd": _usd(row["billed_cost_usd"]),
                "metered_cost_usd": _usd(row["metered_cost_usd"]),
                "unpriced_requests": row["unpriced_requests"],
                "bypass": row["bypass"],
                "alerted": row["alerted_at"] is not None,
                "comparison": row["comparison"],
            }
            for row in rows
        ],
    }


def _usd(value: Any) -> str | None:
    return None if value is None else format_usd(value)
