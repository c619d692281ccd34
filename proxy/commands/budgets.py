"""``tallyproxy budgets create|list|delete``: spending limits per key, user, session or globally."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.commands.common import database_flags, store_command
from proxy.errors import InvalidRequest
from proxy.spend.actions import Action, ActionError, parse_actions
from proxy.spend.budget import SCOPES
from proxy.spend.periods import PERIODS
from proxy.store.budgets import BudgetStore
from proxy.store.types import MAX_BIGINT


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "budgets", help="define, show and delete budgets (USD or tokens per period)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="define a budget")
    database_flags(create)
    create.add_argument("--name", help="shown in refusals and alerts (default from the scope)")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument("--subject", help="the key id, user or session (not for global)")
    create.add_argument("--period", required=True, choices=PERIODS)
    limit = create.add_mutually_exclusive_group(required=True)
    limit.add_argument("--usd", type=_usd, help="limit in USD, e.g. 10 or 0.50")
    limit.add_argument("--tokens", type=_positive, help="limit in tokens")
    create.add_argument(
        "--alert", type=_percentages, default=(), help="alert thresholds in %%, e.g. 50,80,100"
    )
    create.add_argument(
        "--actions",
        type=_actions,
        default=(),
        help='JSON, e.g. \'[{"at": 80, "downgrade": {"gpt-4o": "gpt-4o-mini"}}, '
        '{"at": 95, "refuse": true}]\'',
    )
    create.set_defaults(run=store_command(BudgetStore, _create))
    listing = actions.add_parser("list", help="budgets with this period's spend (JSON lines)")
    database_flags(listing)
    listing.set_defaults(run=store_command(BudgetStore, _list))
    remove = actions.add_parser("delete", help="delete a budget and its spend")
    database_flags(remove)
    remove.add_argument("budget_id")
    remove.set_defaults(run=store_command(BudgetStore, _delete))


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount, e.g. 10 or 0.50") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError("the limit must be above 0")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= MAX_BIGINT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_BIGINT}")
    return int(text)


def _actions(text: str) -> tuple[Action, ...]:
    try:
        return parse_actions(json.loads(text))
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    except ActionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percentages(text: str) -> tuple[int, ...]:
    values = tuple(_positive(part.strip()) for part in text.split(",") if part.strip())
    if any(v > 1000 for v in values):
        raise argparse.ArgumentTypeError("thresholds are percentages, e.g. 50,80,100")
    return values


async def _create(store: BudgetStore, args: argparse.Namespace) -> int:
    if (args.scope == "global") != (args.subject is None):
        print("tallyproxy: --subject names the key id, user or session; none for --scope global")
        return 2
    try:
        row = await store.create(
            name=args.name or f"{args.scope}:{args.subject or '*'}:{args.period}",
            scope=args.scope,
            subject=args.subject,
            period=args.period,
            limit_usd=args.usd,
            limit_tokens=args.tokens,
            alerts=args.alert,
            actions=args.actions,
        )
    except InvalidRequest as exc:
        print(f"tallyproxy: --{exc.param}: {exc.message}")
        return 2
    print(f"tallyproxy: budget {row['id']} ({row['name']}) defined")
    return 0


async def _list(store: BudgetStore, args: argparse.Namespace) -> int:
    from proxy.spend.view import budget_json

    for row in await store.status(datetime.now(UTC)):
        print(json.dumps(budget_json(row)))
    return 0


async def _delete(store: BudgetStore, args: argparse.Namespace) -> int:
    if not await store.delete(args.budget_id):
        print(f"tallyproxy: no budget with id {args.budget_id!r}; see 'tallyproxy budgets list'")
        return 1
    print(f"tallyproxy: budget {args.budget_id} deleted")
    return 0
