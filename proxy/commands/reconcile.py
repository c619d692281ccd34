"""``tallyproxy reconcile``: the provider's usage and cost report beside tallyproxy's totals.

Reads the provider's report with the admin key of ``reconcile.providers.<name>`` and the
local totals from the rollups; prints a table, CSV or JSON (the API's body). Exits 1 when the
report cannot be read (the message names the provider and the call), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.commands.common import database_flags, migrated_database, moment
from proxy.config import Settings


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "reconcile", help="compare the provider's usage and cost report with tallyproxy's"
    )
    database_flags(parser)
    parser.add_argument("--provider", required=True, choices=("openai", "anthropic"))
    parser.add_argument(
        "--since", type=moment, help="ISO date/time (UTC) or an age: 24h, 7d (default 7d)"
    )
    parser.add_argument("--until", type=moment, help="end (exclusive), same forms as --since")
    parser.add_argument(
        "--bucket-width", choices=("1d", "1h"), help="days or hours (reconcile.bucket_width)"
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from proxy.reconcile.render import reconciliation_json, render_csv, render_table
    from proxy.reconcile.reports import ReportError
    from proxy.reconcile.run import NotConfigured, reconcile

    since = args.since or datetime.now(UTC) - timedelta(days=7)

    async def compared() -> Any:
        async with migrated_database(settings) as engine:
            return await reconcile(
                settings, engine, args.provider, since, args.until, args.bucket_width
            )

    try:
        result = asyncio.run(compared())
    except NotConfigured as exc:
        print(f"tallyproxy: {exc}", file=sys.stderr)
        return 2
    except ReportError as exc:
        print(f"tallyproxy: cannot reconcile: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(reconciliation_json(result), indent=2))
    elif args.format == "csv":
        print(render_csv(result))
    else:
        print(render_table(result))
    return 0
