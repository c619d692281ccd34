"""Which provider's price list prices a request: the one of the upstream that served it.

The live path, ``/usage/prices`` and ``tallyproxy reprice`` all ask this, so that a price
shown is the price charged and repricing with unchanged prices changes nothing. Without the
hint genai-prices may find another provider's listing of the name, or none
(``text-embedding-3-small`` is only listed under ``openai``).
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.config import UpstreamSettings
from proxy.routing import NoRoute, choose_upstream


def provider_for_model(routes: Sequence[UpstreamSettings], model: str | None) -> str | None:
    """The hint a new request for ``model`` is priced with: the upstream it routes to."""
    try:
        return choose_upstream(routes, model).pricing_provider
    except NoRoute:
        return None


def provider_for_record(
    routes: Sequence[UpstreamSettings], upstream_url: str | None, model: str | None
) -> str | None:
    """The hint a stored record was priced with: that of the upstream that served it.

    A record of an upstream since removed from the config is priced as a new request for its
    model would be.
    """
    route = route_of_record(routes, upstream_url, model)
    return provider_for_model(routes, model) if route is None else route.pricing_provider


def route_of_record(
    routes: Sequence[UpstreamSettings], upstream_url: str | None, model: str | None
) -> UpstreamSettings | None:
    """The configured upstream whose URL a stored record names, or None.

    Upstreams that share a URL (one gateway, two price lists) are told apart by the model,
    as routing told them apart.
    """
    same_url = [route for route in routes if upstream_url and route.url == upstream_url]
    if len(same_url) <= 1:
        return same_url[0] if same_url else None
    try:
        return choose_upstream(same_url, model)
    except NoRoute:
        return same_url[0]
