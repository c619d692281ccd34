"""Command line: ``tallyproxy <command>``; each command lives in ``proxy/commands/``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from proxy import __version__
from proxy.commands import (
    budgets,
    digest,
    keys,
    migrate,
    prune,
    reconcile,
    report,
    reprice,
    rollups,
    serve,
)
from proxy.commands.common import database_trouble, missing_sqlite_file
from proxy.config import ConfigError, load_settings
from proxy.logs import configure_logging

COMMANDS = (serve, migrate, reprice, report, prune, rollups, keys, budgets, digest, reconcile)
# The commands that may create the database: the others refuse a SQLite file not there yet.
CREATING = ("serve", "migrate")

# Flags that override a setting, whichever command has them.
FLAG_SETTINGS: dict[str, tuple[str, ...]] = {
    "database_url": ("database", "url"),
    "database_read_url": ("database", "read_url"),
    "host": ("server", "host"),
    "port": ("server", "port"),
    "log_level": ("server", "log_level"),
    "log_format": ("logging", "format"),
    "upstream": ("upstream", "url"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tallyproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[tuple[str, ...], Any] = {
        key: getattr(args, flag, None) for flag, key in FLAG_SETTINGS.items()
    }
    try:
        settings = load_settings(getattr(args, "config", None), overrides)
    except ConfigError as exc:
        print(f"tallyproxy: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level, settings.logging.format)
    missing = None if args.command in CREATING else missing_sqlite_file(settings.database.url)
    if missing is not None:
        print(
            f"tallyproxy: no database at {missing}: it does not exist yet. Run this where "
            "`tallyproxy serve` runs, or give its database with --database-url or "
            "TALLYPROXY_DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    try:
        exit_code: int = args.run(settings, args)
    except Exception as exc:  # the CLI's boundary: database trouble is one line, not a traceback
        trouble = database_trouble(exc, settings.database.url)
        if trouble is None:
            raise
        print(f"tallyproxy: {trouble}", file=sys.stderr)
        return 1
    return exit_code
