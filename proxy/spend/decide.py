"""Which budget action applies to a request, pure (the actions: ``proxy.spend.actions``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from proxy.spend.actions import Action
from proxy.spend.budget import Amount, Budget


@dataclass(frozen=True, slots=True)
class Decision:
    model: str | None = None
    """The model to send instead of the one requested; None keeps it."""
    refused_by: Budget | None = None
    """A budget whose ``refuse`` action applies."""


KEEP = Decision()


def used_percent(budget: Budget, used: Amount) -> Decimal:
    """How much of the budget's limit is spent or reserved, in percent (the larger of money
    and tokens when it limits both)."""
    shares = []
    if budget.limit_usd is not None and budget.limit_usd > 0:
        shares.append(used.usd * 100 / budget.limit_usd)
    if budget.limit_tokens:
        shares.append(Decimal(used.tokens * 100) / budget.limit_tokens)
    return max(shares, default=Decimal(0))


def decide(model: str | None, budgets: Sequence[Budget], used: Mapping[str, Amount]) -> Decision:
    """The action for a request for ``model`` counted against ``budgets``, whose usage this
    replica knows as ``used`` (by budget id)."""
    downgraded: str | None = None
    for budget in budgets:
        if not budget.actions:
            continue
        percent = used_percent(budget, used.get(budget.id, Amount()))
        reached = [action for action in budget.actions if percent >= action.at]
        if any(action.refuse for action in reached):
            return Decision(refused_by=budget)
        if downgraded is None and model is not None:
            # The highest threshold reached that lists the model decides.
            for action in reversed(reached):
                target = _downgrade(action, model)
                if target is not None:
                    downgraded = target
                    break
    return KEEP if downgraded is None else Decision(model=downgraded)


def _downgrade(action: Action, model: str) -> str | None:
    for pattern, target in action.downgrade:
        if fnmatch.fnmatchcase(model, pattern) and target != model:
            return target
    return None
