"""`tallyproxy serve` started while its database is down: it serves, spools, and migrates later.

A database that is misconfigured (no such database, an SQLite file that cannot be opened)
still stops start-up, with one line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.test_cli import serve_command
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer
from tests.support.servers import free_port, run_process_server, stop_process

PASSWORD = "s3cret-pw"  # the test server trusts local connections: shown, never checked
REQUESTS = 24
SESSION = "down-at-start"


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


async def answered_ids(base_url: str, count: int) -> list[str]:
    """``count`` requests through the openai SDK, every other one streamed; their record ids."""
    ids: list[str] = []
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-x", max_retries=0) as sdk:
        for index in range(count):
            raw = await sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"request {index}"}],
                stream=index % 2 == 1,
                extra_headers={"X-Session-Id": SESSION},
            )
            ids.append(raw.headers["x-tally-request-id"])
            parsed: Any = raw.parse()
            if index % 2 == 1:
                assert [chunk async for chunk in parsed]  # the stream was answered
            else:
                assert parsed.choices[0].message.content
    return ids


async def until_json(api: httpx.AsyncClient, path: str, done: Any, wait: float = 40.0) -> Any:
    deadline = time.monotonic() + wait
    while True:
        response = await api.get(path)
        body = response.json()
        if done(response.status_code, body):
            return body
        assert time.monotonic() < deadline, f"{path}: {response.status_code} {body}"
        await asyncio.sleep(0.1)


@pytest.mark.postgres
async def test_serve_with_postgres_down_answers_spools_and_migrates_once_it_is_back(
    restartable_postgres: PostgresServer,
    postgres_url: str,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    restartable_postgres.stop()
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {
        "TALLYPROXY_UPSTREAM_URL": fake_upstream.base_url,
        "TALLYPROXY_DATABASE_URL": with_password(postgres_url),
    }
    base = f"http://127.0.0.1:{port}"
    with run_process_server(serve_command(port), port, env, log_path=log_path, cwd=tmp_path) as p:
        ids = await answered_ids(f"{base}/v1", REQUESTS)
        async with httpx.AsyncClient(base_url=base, timeout=10) as api:
            down = await until_json(
                api, "/readyz", lambda status, body: body["spool_records"] == REQUESTS
            )
            assert (down["status"], down["schema_migrated"]) == ("unavailable", False)
            assert (await api.get("/readyz")).status_code == 503
            listing = await api.get("/usage/requests")  # the API needs the database: 503
            assert listing.status_code == 503
            assert listing.json()["error"]["code"] == "database_unavailable"

            await asyncio.to_thread(restartable_postgres.start)
            ready = await until_json(
                api,
                "/readyz",
                # The spool's count drops in its worker thread just before the writer counts
                # the replay: wait for both.
                lambda status, body: (
                    status == 200
                    and body["spool_records"] == 0
                    and body["replayed_total"] >= REQUESTS
                ),
            )
            stored = await until_json(
                api,
                "/usage/requests?limit=1000",
                lambda status, body: status == 200 and len(body["data"]) >= REQUESTS,
            )
            session = (await api.get(f"/usage/sessions/{SESSION}")).json()
        stop_process(p)

    stored_ids = [record["id"] for record in stored["data"]]
    assert sorted(stored_ids) == sorted(ids)  # every answer stored, exactly once
    assert session["requests"] == REQUESTS
    assert session["total_tokens"] == REQUESTS * fake_upstream.usage.total_tokens
    assert ready["replayed_total"] == REQUESTS and ready["dropped_total"] == 0

    output = log_path.read_text()
    assert "Traceback" not in output
    assert PASSWORD not in output
    [unreachable] = [line for line in output.splitlines() if "is not reachable" in line]
    assert f"postgres:***@127.0.0.1:{restartable_postgres.port}" in unreachable
    assert "ConnectionRefusedError" in unreachable and "spooled to" in unreachable
    [back] = [line for line in output.splitlines() if "reachable again" in line]
    assert "migrated to revision " in back
    assert f"replaying {REQUESTS} spooled records" in back


def serve_until_exit(database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = serve_command(free_port(), "--database-url", database_url)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize(
    ("database", "reason"),
    [
        pytest.param("/proc/tally.db", "unable to open database file", id="unopenable-file"),
        pytest.param("/proc/no/such/dir/tally.db", "No such file or directory", id="no-dir"),
    ],
)
def test_an_unusable_sqlite_path_stops_start_up_with_one_line(
    tmp_path: Path, database: str, reason: str
) -> None:
    done = serve_until_exit(f"sqlite+aiosqlite:///{database}", tmp_path)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot use the database" in line]
    assert f"sqlite+aiosqlite:///{database}" in line and reason in line


@pytest.mark.postgres
def test_a_database_that_does_not_exist_stops_start_up_with_one_line(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    if not postgres_server.running:
        postgres_server.start()
    url = with_password(postgres_server.url("no_such_database"))
    done = serve_until_exit(url, tmp_path)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output and PASSWORD not in output
    [line] = [line for line in output.splitlines() if "cannot use the database" in line]
    assert "no_such_database" in line and "postgres:***@" in line
