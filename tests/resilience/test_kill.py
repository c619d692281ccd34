"""SIGKILL in the middle of a load: every answer the client got whole has exactly one record.

Nothing runs at a kill: what the record writer held in memory is gone, and only what reached
a file survives. The journal puts each exchange there before its answer ends; the next start
files what the dead process left.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from proxy.store.journal import KILLED_MID_STREAM
from tests.resilience.load import SESSIONS, assert_sessions_match, until, wait_for_records
from tests.resilience.test_shutdown import serve, write_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import run_process_server

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


async def kill_mid_load(port: int, process: subprocess.Popen[bytes], after: int) -> KillLoad:
    """Load the proxy from 24 clients; SIGKILL it once ``after`` answers came back whole."""
    load = KillLoad()
    sdk = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=10
    )
    counter = iter(range(1_000_000))

    async def client() -> None:
        while load.failed < 50 and load.sent < 20_000:
            await one_request(sdk, next(counter), load)

    async with sdk:
        clients = asyncio.gather(*(client() for _ in range(24)))
        await until(lambda: len(load.whole) >= after, within=60)
        process.send_signal(signal.SIGKILL)
        await clients
    return load


async def test_sigkill_mid_load_loses_no_answered_request(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    fake_upstream.scenario = "slow,chunks=6"
    fake_upstream.delay_ms = 2  # streams in flight at every moment, answers ending all the time
    spool = tmp_path / "spool"
    config = write_config(tmp_path / "c.yaml", fake_upstream.base_url, database_url, spool)
    argv, port = serve(config)
    with run_process_server(argv, port) as process:
        load = await kill_mid_load(port, process, after=600)
        assert await asyncio.to_thread(process.wait, 10) == -signal.SIGKILL
    assert list(spool.glob("journal/slot-*/wal-*.jsonl"))  # what the kill left
    argv, port = serve(config)
    with run_process_server(argv, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            records = await wait_for_records(api, len(load.whole), within=30)
            await asyncio.sleep(0.5)  # the recovered lines are filed before serving: no more
            records = await wait_for_records(api, len(load.whole), within=1)
            await assert_sessions_match(api, records)  # totals count each request once
    counts = collections.Counter(str(r["id"]) for r in records)
    lost = [i for i in load.whole if counts[i] == 0]
    duplicates = [i for i in load.whole if counts[i] > 1]
    cut = sum(1 for r in records if r["error"] == KILLED_MID_STREAM)
    log.warning(
        "SIGKILL figures (%s): sent %d, answered whole %d, failed %d, stored %d "
        "(of which answered whole %d, streams cut by the kill %d), lost %d, duplicates %d",
        database_url.split(":", 1)[0],
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
