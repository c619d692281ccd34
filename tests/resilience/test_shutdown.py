"""SIGTERM in the middle of a load: in-flight streams finish, every answer has its record."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.resilience.load import (
    LoadResult,
    assert_sessions_match,
    run_load,
    until,
    wait_for_records,
)
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer
from tests.support.servers import free_port, run_process_server, stop_process

log = logging.getLogger(__name__)


def write_config(path: Path, upstream: str, database: str, spool: Path) -> Path:
    config = {
        "upstream": {"url": upstream},
        "database": {"url": database, "spool_dir": str(spool)},
        "server": {"shutdown_grace": 10},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def serve(config: Path) -> tuple[list[str], int]:
    port = free_port()
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)]
    return argv, port


async def sigterm_mid_load(port: int, process: subprocess.Popen[bytes], before: int) -> LoadResult:
    """Run a load, SIGTERM the proxy once ``before`` answers came, keep sending a little."""
    result = LoadResult()
    load = asyncio.create_task(
        run_load(
            f"http://127.0.0.1:{port}",
            concurrency=16,
            keep_going=lambda r: r.refused < 20 and r.sent < 2000,
            result=result,
        )
    )
    await until(lambda: len(result.answered) >= before)
    process.send_signal(signal.SIGTERM)
    await load
    return result


async def count_after_restart(config: Path, expected: int) -> list[dict[str, object]]:
    argv, port = serve(config)
    with run_process_server(argv, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            records = await wait_for_records(api, expected, within=20)
            await assert_sessions_match(api, records)
    return records


async def test_sigterm_mid_load_keeps_every_record(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    fake_upstream.scenario = "slow,chunks=12"
    fake_upstream.delay_ms = 15  # streams take ~0.2 s: some are in flight at SIGTERM
    config = write_config(
        tmp_path / "c.yaml", fake_upstream.base_url, database_url, tmp_path / "spool"
    )
    argv, port = serve(config)
    with run_process_server(argv, port) as process:
        result = await sigterm_mid_load(port, process, before=80)
        code = await asyncio.to_thread(stop_process, process, 15)
    assert code in (0, -signal.SIGTERM)
    records = await count_after_restart(config, len(result.answered))
    log.warning(
        "SIGTERM figures: sent %d, answered %d, refused after SIGTERM %d, stored %d",
        result.sent,
        len(result.answered),
        result.refused,
        len(records),
    )
    assert sorted(str(r["id"]) for r in records) == sorted(result.answered)
    assert any(r["stream"] and r["error"] is None for r in records)


@pytest.mark.postgres
async def test_sigterm_with_the_database_down_spools_and_the_next_start_replays(
    restartable_postgres: PostgresServer,
    postgres_url: str,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "c.yaml", fake_upstream.base_url, postgres_url, tmp_path / "spool"
    )
    argv, port = serve(config)
    with run_process_server(argv, port) as process:
        result = LoadResult()
        load = asyncio.create_task(
            run_load(
                f"http://127.0.0.1:{port}",
                concurrency=8,
                keep_going=lambda r: r.sent < 200,
                result=result,
            )
        )
        await until(lambda: len(result.answered) >= 50)
        await asyncio.to_thread(restartable_postgres.stop)
        await load
        code = await asyncio.to_thread(stop_process, process, 15)
    assert code in (0, -signal.SIGTERM)
    assert list((tmp_path / "spool").glob("slot-*/seg-*.jsonl"))  # kept on disk
    await asyncio.to_thread(restartable_postgres.start)
    records = await count_after_restart(config, len(result.answered))
    log.warning(
        "SIGTERM with database down: sent %d, answered %d, stored after restart %d",
        result.sent,
        len(result.answered),
        len(records),
    )
    assert sorted(str(r["id"]) for r in records) == sorted(result.answered)
