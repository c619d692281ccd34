"""``tallyproxy serve``: run the proxy."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.commands.common import database_flags
from proxy.config import Settings


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve", help="run the proxy (applies pending migrations first)"
    )
    database_flags(parser)
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--upstream", help="upstream base URL (default https://api.openai.com/v1)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
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
