"""Command line: ``tallyproxy serve | migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from proxy import __version__
from proxy.config import ConfigError, Settings, load_settings


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
    return parser


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
