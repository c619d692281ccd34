"""SIGKILL in the middle of a load: every answer the client got whole has exactly one record.

Nothing runs at a kill: what the record writer held in memory is gone, and only what reached
a file survives. The journal puts each exchange there before its answer ends; the next start
files what the dead process left.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from proxy.store.journal import KILLED_MID_STREAM
from tests.e2e.test_cli import worker_processes
from tests.resilience.load import SESSIONS, assert_sessions_match, until, wait_for_records
from tests.resilience.test_shutdown import serve, write_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import run_process_server, stop_process

log = logging.getLogger(__name__)


@dataclass
class KillLoad:
    sent: int = 0
    whole: list[str] = field(default_factory=list)
    """Ids of the answers the SDK returned whole (a stream read to its end)."""
    failed: int = 0
    """Requests that got an error or no answer (the proxy was killed under them)."""


async def one_request(sdk: openai.AsyncOpenAI, index: int, load: KillLoad) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"request {index}"}]
    headers = {"X-Session-Id": SESSIONS[index % len(SESSIONS)]}
    load.sent += 1
    chat = sdk.chat.completions
    try:
        if index % 2:
            raw = await chat.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, extra_headers=headers
            )
            raw.parse()
            request_id = raw.headers["x-tally-request-id"]
        else:
            async with chat.with_streaming_response.create(
                model="gpt-4o-mini", messages=messages, stream=True, extra_headers=headers
            ) as response:
                request_id = response.headers["x-tally-request-id"]
                async for _ in await response.parse():
                    pass
    except (openai.APIError, httpx.HTTPError):
        load.failed += 1
        return
    load.whole.append(request_id)


async def run_clients(
    port: int, load: KillLoad, keep_going: Callable[[], bool], *, keep_alive: bool = True
) -> None:
    """24 SDK clients sending requests, half of them streamed, while ``keep_going()``.

    Without ``keep_alive`` each request has its own connection, so that ``--workers`` each
    get their share (a kept-alive connection stays with the worker that accepted it).
    """
    limits = httpx.Limits(max_keepalive_connections=None if keep_alive else 0)
    sdk = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx.AsyncClient(timeout=10, limits=limits),
    )
    counter = iter(range(1_000_000))

    async def client() -> None:
        while keep_going() and load.sent < 20_000:
            await one_request(sdk, next(counter), load)

    async with sdk:
        await asyncio.gather(*(client() for _ in range(24)))


async def wait_for_workers(supervisor: int, count: int) -> list[int]:
    """The supervisor's workers once ``count`` of them run (a new one takes a while)."""
    await until(lambda: len(worker_processes(supervisor)) >= count, within=60)
    return worker_processes(supervisor)


def check(records: list[dict[str, Any]], load: KillLoad, what: str) -> None:
    """Every answer the client got whole has exactly one record, and a complete one."""
    counts = collections.Counter(str(r["id"]) for r in records)
    lost = [i for i in load.whole if counts[i] == 0]
    duplicates = [i for i in load.whole if counts[i] > 1]
    cut = sum(1 for r in records if r["error"] == KILLED_MID_STREAM)
    log.warning(
        "SIGKILL figures (%s): sent %d, answered whole %d, failed %d, stored %d "
        "(of which answered whole %d, streams cut by the kill %d), lost %d, duplicates %d",
        what,
        load.sent,
        len(load.whole),
        load.failed,
        len(records),
        len(load.whole) - len(lost),
        cut,
        len(lost),
        len(duplicates),
    )
    assert (lost, duplicates) == ([], [])
    whole = set(load.whole)
    assert all(r["error"] is None for r in records if r["id"] in whole)
    assert all(r["total_tokens"] for r in records if r["id"] in whole)


async def settled_records(api: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    records = await wait_for_records(api, count, within=60)
    await asyncio.sleep(0.5)  # what was recovered is filed at once: nothing more comes
    records = await wait_for_records(api, count, within=1)
    await assert_sessions_match(api, records)  # totals count each request once
    return records


async def test_sigkill_mid_load_loses_no_answered_request(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    fake_upstream.scenario = "slow,chunks=6"
    fake_upstream.delay_ms = 2  # streams in flight at every moment, answers ending all the time
    spool = tmp_path / "spool"
    config = write_config(tmp_path / "c.yaml", fake_upstream.base_url, database_url, spool)
    argv, port = serve(config)
    load = KillLoad()
    with run_process_server(argv, port) as process:
        clients = asyncio.create_task(run_clients(port, load, lambda: load.failed < 50))
        await until(lambda: len(load.whole) >= 600, within=60)
        process.send_signal(signal.SIGKILL)
        await clients
        assert await asyncio.to_thread(process.wait, 10) == -signal.SIGKILL
    assert list(spool.glob("journal/slot-*/wal-*.jsonl"))  # what the kill left
    argv, port = serve(config)
    with run_process_server(argv, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            records = await settled_records(api, len(load.whole))
    check(records, load, database_url.split(":", 1)[0])


async def test_a_killed_worker_is_replaced_and_its_successor_files_what_it_left(
    fake_upstream: FakeUpstream, postgres_url: str, tmp_path: Path
) -> None:
    """--workers 2: the other worker keeps serving and keeps its journal; the supervisor's
    new worker takes over the dead one's slot."""
    fake_upstream.scenario = "slow,chunks=6"
    fake_upstream.delay_ms = 2
    spool = tmp_path / "spool"
    config = write_config(tmp_path / "c.yaml", fake_upstream.base_url, postgres_url, spool)
    argv, port = serve(config)
    load = KillLoad()
    stop = asyncio.Event()
    server_log = tmp_path / "server.log"
    with run_process_server([*argv, "--workers", "2"], port, log_path=server_log) as supervisor:
        workers = await wait_for_workers(supervisor.pid, 2)
        clients = asyncio.create_task(
            run_clients(port, load, lambda: not stop.is_set(), keep_alive=False)
        )
        await until(lambda: len(load.whole) >= 600, within=60)
        os.kill(workers[0], signal.SIGKILL)
        killed_at = len(load.whole)
        await until(lambda: len(load.whole) >= killed_at + 600, within=60)
        stop.set()
        await clients
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            records = await settled_records(api, len(load.whole))
        assert workers[0] not in await wait_for_workers(supervisor.pid, 2)
        code = await asyncio.to_thread(stop_process, supervisor, 20)
    assert code in (0, -signal.SIGTERM)
    check(records, load, "postgres, --workers 2, one worker killed")
    assert load.failed > 0  # the killed worker was serving
    assert "left by processes that ended before their records were safe" in server_log.read_text()
    assert not list(spool.glob("journal/slot-*/wal-*.jsonl"))  # all settled, all removed
