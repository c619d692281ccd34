"""``tallyproxy keys create|list|revoke``: virtual keys that apps use instead of a provider key."""

from __future__ import annotations

import argparse
import json
from typing import Any

from proxy.commands.common import database_flags, moment, store_command
from proxy.store.access import KeyStore


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "keys", help="issue, list and revoke virtual keys (tp-...)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a key; it is printed once")
    database_flags(create)
    create.add_argument("--name", required=True, help="what the key is for, e.g. billing-app")
    create.add_argument("--user", help="the user the key's requests are recorded for")
    create.add_argument(
        "--models",
        type=_names,
        default=(),
        help="comma-separated model names or globs the key may call (default: all)",
    )
    create.add_argument(
        "--expires", type=moment, metavar="WHEN", help="ISO date/time (UTC) the key stops working"
    )
    create.set_defaults(run=store_command(KeyStore, _create))
    listing = actions.add_parser("list", help="every key, without the keys themselves")
    database_flags(listing)
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(run=store_command(KeyStore, _list))
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    database_flags(revoke)
    revoke.add_argument("key_id", help="the id shown by 'keys list'")
    revoke.set_defaults(run=store_command(KeyStore, _revoke))


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    key, row = await store.create(
        args.name, user_id=args.user, models=args.models, expires_at=args.expires
    )
    print(key.secret)
    print(f"tallyproxy: issued key {row['id']} ({args.name}); it is shown only this once")
    return 0


async def _list(store: KeyStore, args: argparse.Namespace) -> int:
    from proxy.api.admin import key_json

    rows = [key_json(row) for row in await store.list()]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'id':<16}  {'prefix':<10}  {'name':<20}  {'user':<16}  status")
    for row in rows:
        status = "revoked" if row["revoked_at"] else f"expires {row['expires_at']}"
        if not row["revoked_at"] and not row["expires_at"]:
            status = "active"
        print(
            f"{row['id']:<16}  {row['prefix']:<10}  {row['name'][:20]:<20}  "
            f"{(row['user'] or '-')[:16]:<16}  {status}"
        )
    return 0


async def _revoke(store: KeyStore, args: argparse.Namespace) -> int:
    if not await store.revoke(args.key_id):
        print(f"tallyproxy: no key with id {args.key_id!r}; see 'tallyproxy keys list'")
        return 1
    print(f"tallyproxy: revoked key {args.key_id} (other replicas follow within seconds)")
    return 0
