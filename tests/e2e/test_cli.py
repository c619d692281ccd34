"""`tallyproxy` as users run it: a separate process configured by flags and environment."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_process_server, stop_process


def serve_command(port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "serve", "--port", str(port), *flags]


def serve_env(upstream: FakeUpstream, database_url: str) -> dict[str, str]:
    return {"TALLYPROXY_UPSTREAM_URL": upstream.base_url, "TALLYPROXY_DATABASE_URL": database_url}


async def stored_session(session_id: str, env: dict[str, str]) -> dict[str, Any]:
    """The session as a freshly started proxy (the database given by flag) reads it."""
    port = free_port()
    flags = ("--database-url", env["TALLYPROXY_DATABASE_URL"])
    with run_process_server(serve_command(port, *flags), port, env):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            session: dict[str, Any] = (await api.get(f"/usage/sessions/{session_id}")).json()
    return session


async def test_serve_by_environment_and_shutdown_keeps_every_record(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    env = serve_env(fake_upstream, database_url)
    port = free_port()
    with run_process_server(serve_command(port), port, env) as process:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0
        ) as sdk:
            for _ in range(20):
                await sdk.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"X-Session-Id": "cli"},
                )
        # SIGTERM right away: what is still queued must be flushed before the process exits.
        # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
        assert stop_process(process) in (0, -signal.SIGTERM)

    session = await stored_session("cli", env)
    assert session["requests"] == 20
    assert session["total_tokens"] == 20 * fake_upstream.usage.total_tokens


def worker_processes(pid: int) -> list[int]:
    """The uvicorn workers of a supervisor (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


async def wait_for_workers(pid: int, count: int, within: float = 60.0) -> list[int]:
    """The supervisor's workers once ``count`` run: the port answers as soon as the first one
    is up, and on a busy machine the second may still be starting."""
    deadline = time.monotonic() + within
    while True:
        workers = worker_processes(pid)
        if len(workers) >= count or time.monotonic() > deadline:
            return workers
        await asyncio.sleep(0.1)


async def test_two_workers_share_the_port_and_the_database_and_lose_nothing(
    fake_upstream: FakeUpstream, database_url: str
) -> None:
    env = serve_env(fake_upstream, database_url)
    port = free_port()
    with run_process_server(serve_command(port, "--workers", "2"), port, env) as supervisor:
        assert len(await wait_for_workers(supervisor.pid, 2)) == 2
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0
        ) as sdk:

            async def client(n: int) -> None:
                for _ in range(5):
                    await sdk.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"hi from {n}"}],
                        extra_headers={"X-Session-Id": "workers"},
                    )

            await asyncio.gather(*(client(n) for n in range(8)))
        assert stop_process(supervisor) in (0, -signal.SIGTERM)  # each worker flushes

    session = await stored_session("workers", env)
    assert session["requests"] == 40
    assert session["total_tokens"] == 40 * fake_upstream.usage.total_tokens


def test_migrate_command_and_config_errors(tmp_path: Path) -> None:
    database = tmp_path / "migrated.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "migrate",
            "--database-url",
            f"sqlite+aiosqlite:///{database}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert database.exists()

    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: not-a-port\n")
    failed = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 2
    assert "config key 'server.port'" in failed.stderr
    assert "Traceback" not in failed.stderr
