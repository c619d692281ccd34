"""`tallyproxy` as users run it: a separate process configured by flags and environment."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_process_server, stop_process


def serve_command(port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "serve", "--port", str(port), *flags]


async def test_serve_by_environment_and_shutdown_keeps_every_record(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    env = {
        "TALLYPROXY_UPSTREAM_URL": fake_upstream.base_url,
        "TALLYPROXY_DATABASE_URL": database_url,
    }
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

    port = free_port()
    with run_process_server(serve_command(port, "--database-url", database_url), port, env):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            session = (await api.get("/usage/sessions/cli")).json()
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


async def test_two_workers_share_the_port_and_the_database_and_lose_nothing(
    fake_upstream: FakeUpstream, database_url: str
) -> None:
    env = {
        "TALLYPROXY_UPSTREAM_URL": fake_upstream.base_url,
        "TALLYPROXY_DATABASE_URL": database_url,
    }
    port = free_port()
    with run_process_server(serve_command(port, "--workers", "2"), port, env) as supervisor:
        assert len(worker_processes(supervisor.pid)) == 2
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

    port = free_port()
    with run_process_server(serve_command(port, "--database-url", database_url), port, env):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            session = (await api.get("/usage/sessions/workers")).json()
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
