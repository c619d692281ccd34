"""Real servers for tests: an ASGI app under uvicorn in a thread, or a command as a subprocess.

Both wait until the server answers before yielding and shut it down cleanly afterwards, so
that ``filterwarnings = ["error"]`` never trips over a leaked socket, loop or process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn

Lifespan = Literal["auto", "on", "off"]

__all__ = ["free_port", "run_asgi_server", "run_asgi_server_async", "run_process_server"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _ThreadedServer:
    """A uvicorn server for one ASGI app, on its own event loop in a daemon thread."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int | None,
        *,
        lifespan: Lifespan,
        graceful_timeout: float,
        loop: str,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port or 0))
        bound_port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{bound_port}"
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            loop=loop,
            ws="none",  # websockets' deprecation warnings would crash the server thread
            log_config=None,  # leave logging to pytest's capture
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=math.ceil(graceful_timeout),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def startup_state(self) -> bool:
        """True once serving; raises if the thread died during startup."""
        if self.server.started:
            return True
        if not self.thread.is_alive():
            raise RuntimeError(
                f"uvicorn server for {self.url} exited during startup (see the captured log)"
            )
        return False

    def request_exit(self) -> None:
        self.server.should_exit = True

    def finish(self) -> None:
        """After the thread is joined (or given up on): release what is left."""
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)
        self.sock.close()


@contextlib.contextmanager
def run_asgi_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    lifespan: Lifespan = "auto",
    graceful_timeout: float = 3.0,
    loop: str = "auto",
    startup_timeout: float = 15.0,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL (no trailing /).

    The listening socket is bound before the thread starts, so the port is known and reserved
    up front. ``graceful_timeout`` bounds how long shutdown waits for open responses (e.g. a
    stream the test left hanging) before cancelling them.
    """
    server = _ThreadedServer(
        app, host, port, lifespan=lifespan, graceful_timeout=graceful_timeout, loop=loop
    )
    try:
        server.start()
        deadline = time.monotonic() + startup_timeout
        while not server.startup_state():
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn server for {server.url} did not start in time")
            time.sleep(0.002)
        yield server.url
    finally:
        server.request_exit()
        server.thread.join(graceful_timeout + 5)
        server.finish()


@contextlib.asynccontextmanager
async def run_asgi_server_async(
    app: Any,
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    lifespan: Lifespan = "auto",
    graceful_timeout: float = 3.0,
    loop: str = "auto",
    startup_timeout: float = 15.0,
) -> AsyncIterator[str]:
    """Like :func:`run_asgi_server`, but waits without blocking the caller's event loop.

    Use it from async tests whose own loop holds connections to the server: a blocking join
    there would wait for connections that only the blocked loop can close.
    """
    server = _ThreadedServer(
        app, host, port, lifespan=lifespan, graceful_timeout=graceful_timeout, loop=loop
    )
    try:
        server.start()
        deadline = time.monotonic() + startup_timeout
        while not server.startup_state():
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn server for {server.url} did not start in time")
            await asyncio.sleep(0.002)
        yield server.url
    finally:
        server.request_exit()
        await asyncio.to_thread(server.thread.join, graceful_timeout + 5)
        server.finish()


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "<no log>"


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server process exited with code {proc.returncode} before {url} answered;"
                    f" its output:\n{_log_tail(log_path)}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{url} did not answer 200 within {timeout}s; server output:\n"
                    f"{_log_tail(log_path)}"
                )
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM ``proc``, SIGKILL it if it outlives ``timeout``; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def run_process_server(
    argv: Sequence[str],
    port: int,
    env: Mapping[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    health_path: str = "/healthz",
    startup_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    log_path: Path | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` as a subprocess until ``http://host:port{health_path}`` answers 200.

    ``env`` adds to (or overrides) the current environment. stdout and stderr go to
    ``log_path`` (a temporary file when not given); startup failures quote its tail. On exit
    the process gets SIGTERM, then SIGKILL after ``stop_timeout`` seconds; a test may stop it
    itself first (see :func:`stop_process`).
    """
    full_env = {**os.environ, **(env or {})}
    with contextlib.ExitStack() as stack:
        if log_path is None:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tallyproxy-proc-"))
            log_path = Path(tmpdir) / "server.log"
        log = stack.enter_context(open(log_path, "wb"))
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
        )
        stack.callback(stop_process, proc, stop_timeout)
        _wait_healthy(proc, f"http://{host}:{port}{health_path}", startup_timeout, log_path)
        yield proc
