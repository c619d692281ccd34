"""The session tree from stored path nodes: ancestors filled in, totals rolled up."""

from decimal import Decimal
from typing import Any

from proxy.store.session_tree import parent_of, session_tree
from proxy.store.tables import TOKEN_FIELDS


def totals(requests: int, tokens: int, cost: str | None, errors: int = 0, **key: Any) -> Any:
    return {
        **key,
        "requests": requests,
        **dict.fromkeys(TOKEN_FIELDS, 0),
        "total_tokens": tokens,
        "cost_usd": None if cost is None else Decimal(cost),
        "unpriced_requests": requests if cost is None else 0,
        "errors": errors,
        "latency_ms": 100.0 * requests,
    }


def test_parent_of() -> None:
    assert [parent_of(p) for p in ("/plan/search/2", "/plan/search", "/plan")] == [
        "/plan/search",
        "/plan",
        "/",
    ]


def test_the_tree_rolls_children_up_and_puts_the_costliest_branch_first() -> None:
    # 10 requests: 2 without a path, 8 under /plan (1), /plan/search/1 (3), /plan/search/2
    # (2, one failed), /answer (2).
    session = totals(10, 1000, "1.000", errors=1)
    nodes = [
        totals(1, 100, "0.050", path="/plan"),
        totals(3, 300, "0.300", path="/plan/search/1"),
        totals(2, 200, "0.250", errors=1, path="/plan/search/2"),
        totals(2, 200, "0.350", path="/answer"),
    ]
    tree = session_tree(session, nodes)
    assert tree["path"] == "/"
    assert tree["total"]["requests"] == 10
    assert tree["total"]["cost_usd"] == Decimal("1.000")
    assert tree["own"]["requests"] == 2
    assert tree["own"]["total_tokens"] == 200
    assert tree["own"]["cost_usd"] == Decimal("0.050")
    plan, answer = tree["children"]
    assert (plan["path"], answer["path"]) == ("/plan", "/answer")  # 0.60 before 0.35
    assert plan["own"]["requests"] == 1
    assert plan["total"]["requests"] == 6
    assert plan["total"]["cost_usd"] == Decimal("0.600")
    (search,) = plan["children"]
    # /plan/search has no request of its own: it exists as the parent of its two children.
    assert search["path"] == "/plan/search"
    assert search["own"]["requests"] == 0
    assert search["own"]["cost_usd"] is None
    assert search["total"]["requests"] == 5
    assert search["total"]["errors"] == 1
    assert search["total"]["error_rate"] == 0.2
    assert search["total"]["latency_ms"] == 500.0
    assert [child["path"] for child in search["children"]] == [
        "/plan/search/1",
        "/plan/search/2",
    ]
    assert tree["total"]["error_rate"] == 0.1


def test_a_session_without_paths_is_its_root() -> None:
    tree = session_tree(totals(3, 30, None), [])
    assert tree["children"] == []
    assert tree["own"] == tree["total"]
    assert tree["total"]["cost_usd"] is None
    assert tree["total"]["unpriced_requests"] == 3


def test_the_root_has_no_cost_when_its_own_requests_are_all_unpriced() -> None:
    session = totals(3, 30, "0.5")
    session["unpriced_requests"] = 1
    priced = totals(2, 20, "0.5", path="/tool")
    tree = session_tree(session, [priced])
    assert tree["own"]["requests"] == 1
    assert tree["own"]["unpriced_requests"] == 1
    assert tree["own"]["cost_usd"] is None
    assert tree["total"]["cost_usd"] == Decimal("0.5")
