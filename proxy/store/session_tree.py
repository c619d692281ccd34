"""Pure assembly of a session's path tree from the totals stored per path node.

A request tagged ``X-Session-Path: /plan/search/2`` adds to the node ``/plan/search/2``
(``session_paths``); its ancestors ``/plan/search`` and ``/plan`` exist in the tree even
when no request names them. The root ``/`` holds the requests without a path: the session's
totals less every stored node's. A node's ``total`` is its ``own`` plus its children's
totals; children come costliest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from proxy.store.tables import SESSION_MEASURES

ROOT = "/"


def parent_of(path: str) -> str:
    """``/plan/search`` for ``/plan/search/2``; the root for a top-level node."""
    head, _, _ = path.rpartition("/")
    return head or ROOT


def session_tree(session: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The tree of one session: ``session`` is its ``sessions`` row, ``nodes`` its paths'."""
    own: dict[str, dict[str, Any]] = {ROOT: _numbers(session)}
    for node in nodes:
        numbers = _numbers(node)
        own[node["path"]] = numbers
        _subtract(own[ROOT], numbers)
    root = own[ROOT]
    if root["requests"] == root["unpriced_requests"]:
        root["cost_usd"] = None  # the priced requests all have a path
    children: dict[str, list[str]] = {}
    for path in list(own):
        while path != ROOT:
            parent = parent_of(path)
            siblings = children.setdefault(parent, [])
            if path in siblings:
                break
            siblings.append(path)
            own.setdefault(parent, _zero())
            path = parent
    return _assemble(ROOT, own, children)


def _assemble(
    path: str, own: dict[str, dict[str, Any]], children: dict[str, list[str]]
) -> dict[str, Any]:
    kids = [_assemble(child, own, children) for child in children.get(path, [])]
    kids.sort(key=_costliest_first)
    total = dict(own[path])
    for kid in kids:
        _add(total, kid["total"])
    return {
        "path": path,
        "own": _with_rate(own[path]),
        "total": _with_rate(total),
        "children": kids,
    }


def _costliest_first(node: Mapping[str, Any]) -> tuple[Decimal, int, str]:
    total = node["total"]
    return (-(total["cost_usd"] or Decimal(0)), -total["total_tokens"], node["path"])


def _numbers(row: Mapping[str, Any]) -> dict[str, Any]:
    numbers: dict[str, Any] = {name: row.get(name) or 0 for name in SESSION_MEASURES}
    numbers["cost_usd"] = row.get("cost_usd")
    return numbers


def _zero() -> dict[str, Any]:
    return {**dict.fromkeys(SESSION_MEASURES, 0), "cost_usd": None}


def _add(into: dict[str, Any], numbers: Mapping[str, Any]) -> None:
    for name in SESSION_MEASURES:
        into[name] += numbers[name]
    if numbers["cost_usd"] is not None:
        into["cost_usd"] = numbers["cost_usd"] + (into["cost_usd"] or 0)


def _subtract(into: dict[str, Any], numbers: Mapping[str, Any]) -> None:
    for name in SESSION_MEASURES:
        into[name] -= numbers[name]
    if numbers["cost_usd"] is not None and into["cost_usd"] is not None:
        into["cost_usd"] -= numbers["cost_usd"]


def _with_rate(numbers: dict[str, Any]) -> dict[str, Any]:
    requests = numbers["requests"]
    return {**numbers, "error_rate": numbers["errors"] / requests if requests else 0.0}
