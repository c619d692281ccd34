"""Command line: ``tallyproxy <command>``; each command lives in ``proxy/commands/``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from proxy import __version__
from proxy.commands import budgets, keys, migrate, prune, report, reprice, rollups, serve
from proxy.config import ConfigError, load_settings

COMMANDS = (serve, migrate, reprice, report, prune, rollups, keys, budgets)

# Flags that override a setting, whichever command has them.
FLAG_SETTINGS: dict[str, tuple[str, ...]] = {
    "database_url": ("database", "url"),
    "database_read_url": ("database", "read_url"),
    "host": ("server", "host"),
    "port": ("server", "port"),
    "log_level": ("server", "log_level"),
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
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    exit_code: int = args.run(settings, args)
    return exit_code
