"""``GET /metrics``: the Prometheus exposition of ``request.app.state.metrics``.

It is guarded like the usage API: once an admin token is configured, a scrape needs
``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: <token>}`` in
the scrape config), because the metrics name the models in use and what they cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, params
from starlette.responses import Response

from proxy.metrics import Metrics


def metrics_router(*, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    router = APIRouter()
    router.add_api_route(
        "/metrics",
        get_metrics,
        methods=["GET"],
        dependencies=list(dependencies),
        include_in_schema=False,
    )
    return router


async def get_metrics(request: Request) -> Response:
    """Every metric of this process, in Prometheus' text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=metrics.content_type)
