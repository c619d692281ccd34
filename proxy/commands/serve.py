"""``tallyproxy serve``: run the proxy, in one process or as ``--workers N`` processes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.commands.common import database_flags, read_flags
from proxy.config import ENV_KEYS, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from proxy.connections import ConnectionLimits

log = logging.getLogger(__name__)
STARTUP_FAILURE = 3  # uvicorn's exit code when the app does not start
# Linux's default ceiling (fs.nr_open) when the hard limit is "unlimited".
NR_OPEN_DEFAULT = 1024 * 1024


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve", help="run the proxy (applies pending migrations first)"
    )
    database_flags(parser)
    read_flags(parser)
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--upstream", help="upstream base URL (default https://api.openai.com/v1)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text, or one JSON object a line for log shippers (or TALLYPROXY_LOG_FORMAT)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port and the database (default 1)",
    )
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.access.mode import access_mode
    from proxy.banner import AnnounceWhenReady, banner_lines
    from proxy.connections import ConnectionGuard
    from proxy.shutdown import CuttingServer

    try:
        mode = access_mode(settings)  # an open configuration stops here, before any worker starts
    except ConfigError as exc:
        print(f"tallyproxy: {exc}", file=sys.stderr)
        return 2

    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_level": settings.server.log_level,
        "access_log": False,
        # Nothing reads the client's address (no access log), so X-Forwarded-* rewriting
        # would be work on every request for nothing.
        "proxy_headers": False,
        "timeout_graceful_shutdown": int(settings.server.shutdown_grace),
        "loop": "uvloop",
        "http": ConnectionGuard(
            connection_limits(settings, raise_descriptor_limit())
        ).protocol_factory(),
        "ws": "none",  # no WebSocket routes: no websockets module in memory
    }
    lines = banner_lines(settings, mode, workers=args.workers)
    if args.workers <= 1:
        server = CuttingServer(
            uvicorn.Config(AnnounceWhenReady(worker_app(settings), lines), **options)
        )
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises a Ctrl-C once done
            server.run()
        return 0 if server.started else STARTUP_FAILURE
    for line in lines:  # the supervisor's, once: each worker has its own lifespan
        log.info("%s", line)
    # The supervisor only starts and watches the workers: it never imports the app (~70 MB).
    with tempfile.TemporaryDirectory(prefix="tallyproxy-") as private:
        _hand_settings_to_workers(settings, Path(private))
        uvicorn.run(
            "proxy.commands.serve:worker_app", factory=True, workers=args.workers, **options
        )
    return 0


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one where allowed; return the limit.

    Each client and upstream connection holds a descriptor: at the usual soft limit of 1,024
    a few hundred clients would be enough to make ``accept()`` fail for everybody.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "file descriptors: limit stays %d, raising it to %d failed: %s", soft, wanted, exc
            )
            return soft
        log.info("file descriptors: limit raised from %d to %d", soft, wanted)
        return wanted
    log.info("file descriptors: limit %d", soft)
    return soft if soft != resource.RLIM_INFINITY else NR_OPEN_DEFAULT


def connection_limits(settings: Settings, descriptors: int) -> ConnectionLimits:
    """The client connection bounds: as configured, or what the descriptor limit leaves."""
    from proxy.connections import ConnectionLimits, client_connection_bound

    server = settings.server
    upstream = sum(route.max_connections for route in settings.routes)
    bound = server.max_connections or client_connection_bound(descriptors, upstream)
    log.info(
        "connections: at most %d from clients, %s per client address, headers within %g s",
        bound,
        server.max_connections_per_client or "no bound",
        server.header_timeout,
    )
    return ConnectionLimits(server.header_timeout, bound, server.max_connections_per_client)


def worker_app(settings: Settings | None = None) -> ASGIApp:
    """The app of one process; a ``--workers`` process reads the settings its parent resolved."""
    from proxy.app import create_app
    from proxy.fastpath import ProxyFastPath
    from proxy.logs import configure_logging
    from proxy.requestlog import UnrecordedRequests

    if settings is None:  # a fresh interpreter: its log lines need a handler of their own
        settings = load_settings()
        configure_logging(settings.server.log_level, settings.logging.format)
    app = ProxyFastPath(create_app(settings))
    if not settings.logging.access:
        return app
    return UnrecordedRequests(app)


def _hand_settings_to_workers(settings: Settings, directory: Path) -> None:
    """Write the resolved settings where each worker's ``load_settings()`` will find them.

    Workers are fresh interpreters: they get the file through ``TALLYPROXY_CONFIG``, and the
    other ``TALLYPROXY_*`` variables are removed because the file already holds their effect
    (re-applying them would undo command-line flags). Keys named by ``api_key_env`` stay in
    the environment; other keys are in the file, which only this user can read.
    """
    data = settings.model_dump(mode="json", exclude_defaults=True)
    for route in [data.get("upstream"), *data.get("upstreams", [])]:
        if isinstance(route, dict) and route.get("api_key_env"):
            route.pop("api_key", None)
    path = directory / "settings.yaml"
    path.touch(mode=0o600)
    path.write_text(json.dumps(data), encoding="utf-8")
    for name in ENV_KEYS:
        os.environ.pop(name, None)
    os.environ["TALLYPROXY_CONFIG"] = str(path)
