"""Command line: ``tallyproxy serve | migrate | reprice``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from proxy import __version__
from proxy.config import ConfigError, Settings, load_settings
from proxy.money import format_usd

if TYPE_CHECKING:
    from proxy.store.reprice import RepriceReport


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tallyproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy (applies pending migrations first)")
    _common_flags(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--upstream", help="upstream base URL (default https://api.openai.com/v1)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    migrate = commands.add_parser("migrate", help="apply pending database migrations and exit")
    _common_flags(migrate)

    reprice = commands.add_parser(
        "reprice", help="recompute stored costs with the current prices and say what moved"
    )
    _common_flags(reprice)
    reprice.add_argument(
        "--since", required=True, type=_moment, help="ISO date/time (UTC) or an age: 90m, 24h, 7d"
    )
    reprice.add_argument("--until", type=_moment, help="end (exclusive), same forms as --since")
    reprice.add_argument("--model", help="only records of this model")
    reprice.add_argument("--dry-run", action="store_true", help="report, change nothing")
    return parser


_AGE = re.compile(r"(\d+)([mhd])")
_AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _moment(text: str) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00:00Z`` (naive = UTC) or an age such as ``24h``."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return datetime.now(UTC) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO date/time nor an age like 24h"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (or TALLYPROXY_CONFIG)")
    parser.add_argument(
        "--database-url", help="sqlite+aiosqlite:///file.db or postgresql+asyncpg://..."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[tuple[str, ...], Any] = {("database", "url"): args.database_url}
    if args.command == "serve":
        overrides |= {
            ("server", "host"): args.host,
            ("server", "port"): args.port,
            ("server", "log_level"): args.log_level,
            ("upstream", "url"): args.upstream,
        }
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"tallyproxy: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "reprice":
        return asyncio.run(_reprice(settings, args))
    return _serve(settings)


def _serve(settings: Settings) -> int:
    import uvicorn

    from proxy.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace),
    )
    return 0


def _migrate(settings: Settings) -> int:
    from proxy.store.engine import create_engine
    from proxy.store.migrate import upgrade_database

    async def run() -> None:
        engine = create_engine(settings.database.url)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    print(f"tallyproxy: database at {settings.database.url.split('@')[-1]} is up to date")
    return 0


async def _reprice(settings: Settings, args: argparse.Namespace) -> int:
    from proxy.pricing import PriceBook
    from proxy.store.engine import create_engine
    from proxy.store.migrate import upgrade_database
    from proxy.store.reprice import reprice

    book = PriceBook(settings.prices)
    engine = create_engine(settings.database.url)
    try:
        await upgrade_database(engine)
        report = await reprice(
            engine,
            lambda model, usage, at: book.cost(model, usage, at=at),
            since=args.since,
            until=args.until,
            model=args.model,
            dry_run=args.dry_run,
        )
    finally:
        await engine.dispose()
    print(format_reprice_report(report, dry_run=args.dry_run))
    return 0


def format_reprice_report(report: RepriceReport, *, dry_run: bool) -> str:
    """A table of what repricing moved, per model, with the totals before and after."""
    rows = [("model", "records", "changed", "before USD", "after USD", "difference", "unpriced")]
    for model, change in sorted(report.models.items()):
        rows.append(
            (
                model,
                str(change.records),
                str(change.changed),
                format_usd(change.before),
                format_usd(change.after),
                format_usd(change.after - change.before),
                f"{change.unpriced_before} -> {change.unpriced_after}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    verb = "would change" if dry_run else "changed"
    lines.append(f"{report.examined} records examined, {verb} {report.changed}")
    return "\n".join(line.rstrip() for line in lines)
