"""Which budget action applies (``proxy.spend.decide``), over usage a replica knows."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.spend.actions import parse_actions
from proxy.spend.budget import Amount, Budget
from proxy.spend.decide import decide, used_percent

DOWNGRADES = [
    {"at": 80, "downgrade": {"gpt-4o": "gpt-4o-mini", "claude-sonnet-4*": "claude-haiku-4-5"}},
    {"at": 90, "downgrade": {"gpt-4o*": "gpt-4.1-nano"}},
    {"at": 100, "refuse": True},
]


def budget(
    usd: str | None = "10", tokens: int | None = None, actions: object = DOWNGRADES
) -> Budget:
    return Budget(
        id="b",
        name="team",
        scope="global",
        subject=None,
        period="day",
        limit_usd=None if usd is None else Decimal(usd),
        limit_tokens=tokens,
        alerts=(),
        actions=parse_actions(actions),
    )


@pytest.mark.parametrize(
    ("model", "spent", "sent", "refused"),
    [
        ("gpt-4o", "7.99", None, False),
        ("gpt-4o", "8", "gpt-4o-mini", False),
        ("claude-sonnet-4-5-20250929", "8.5", "claude-haiku-4-5", False),
        ("claude-opus-4-1", "8.5", None, False),  # not listed: sent as asked
        ("gpt-4o", "9", "gpt-4.1-nano", False),  # the highest threshold that lists it wins
        ("gpt-4o-mini", "8.5", None, False),  # 80 % lists gpt-4o only
        ("gpt-4o-mini", "9.5", "gpt-4.1-nano", False),
        ("gpt-4o", "10", None, True),
        (None, "9", None, False),
    ],
)
def test_decide(model: str | None, spent: str, sent: str | None, refused: bool) -> None:
    decision = decide(model, [budget()], {"b": Amount(Decimal(spent), 0)})
    assert decision.model == sent
    assert (decision.refused_by is not None) == refused


def test_the_fuller_of_money_and_tokens_counts() -> None:
    both = budget(usd="10", tokens=1000)
    assert used_percent(both, Amount(Decimal("1"), 850)) == 85
    assert decide("gpt-4o", [both], {"b": Amount(Decimal("1"), 850)}).model == "gpt-4o-mini"


def test_a_budget_without_actions_or_usage_keeps_the_model() -> None:
    assert decide("gpt-4o", [budget(actions=None)], {"b": Amount(Decimal(9), 0)}).model is None
    assert decide("gpt-4o", [budget()], {}).model is None


def test_any_budget_refusing_refuses() -> None:
    calm = budget(usd="100")
    full = Budget(
        id="c",
        name="full",
        scope="global",
        subject=None,
        period="day",
        limit_usd=Decimal(1),
        limit_tokens=None,
        alerts=(),
        actions=parse_actions([{"at": 50, "refuse": True}]),
    )
    used = {"b": Amount(Decimal(1), 0), "c": Amount(Decimal("0.5"), 0)}
    assert decide("gpt-4o", [calm, full], used).refused_by == full
