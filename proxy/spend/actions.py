"""What a budget does before it refuses, pure: downgrade to a cheaper model, or refuse early.

A budget may carry actions by threshold (percent of its limit, spent plus reserved)::

    [{"at": 80, "downgrade": {"gpt-4o": "gpt-4o-mini", "claude-sonnet-4*": "claude-haiku-4-5"}},
     {"at": 95, "refuse": true}]

Past a threshold, a request for a listed model (a ``fnmatch`` pattern, tried in order) is
sent as the cheaper one; past a ``refuse`` threshold every request is refused. The decision
comes from the usage a replica already holds, never from a database call (``proxy.spend.decide``).
A request the budget cannot hold any more is still refused at 100 % whatever the actions say.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Action:
    at: int
    """Percent of the limit, spent plus reserved, from which the action applies."""
    downgrade: tuple[tuple[str, str], ...] = ()
    """(model pattern, model sent instead), tried in order."""
    refuse: bool = False


class ActionError(ValueError):
    """An action list that cannot be used; the message names what is wrong."""


def parse_actions(value: Any) -> tuple[Action, ...]:
    """Actions from their JSON form (the admin API, the CLI, the ``budgets`` row), sorted by
    threshold; raises ``ActionError``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ActionError('actions must be a list, e.g. [{"at": 80, "downgrade": {...}}]')
    actions = [_action(item, n) for n, item in enumerate(value)]
    return tuple(sorted(actions, key=lambda action: action.at))


def _action(item: Any, n: int) -> Action:
    where = f"actions[{n}]"
    if not isinstance(item, dict) or set(item) - {"at", "downgrade", "refuse"}:
        raise ActionError(f"{where} must be an object with at and downgrade or refuse")
    at = item.get("at")
    if type(at) is not int or not 0 < at <= 1000:
        raise ActionError(f"{where}.at must be a percentage of the limit from 1 to 1000")
    downgrade = item.get("downgrade") or {}
    refuse = item.get("refuse", False)
    if not isinstance(downgrade, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in downgrade.items()
    ):
        raise ActionError(f"{where}.downgrade must map model names (or patterns) to models")
    if not isinstance(refuse, bool):
        raise ActionError(f"{where}.refuse must be true or false")
    if not downgrade and not refuse:
        raise ActionError(f"{where} does nothing: give downgrade or refuse: true")
    return Action(at, tuple(downgrade.items()), refuse)


def actions_json(actions: Iterable[Action]) -> list[dict[str, Any]]:
    """The JSON form ``parse_actions`` reads."""
    out: list[dict[str, Any]] = []
    for action in actions:
        item: dict[str, Any] = {"at": action.at}
        if action.downgrade:
            item["downgrade"] = dict(action.downgrade)
        if action.refuse:
            item["refuse"] = True
        out.append(item)
    return out
