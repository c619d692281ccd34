"""A stream still running when the shutdown grace is over: cut with a word, recorded as such."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import openai
import yaml

from proxy.records import PROXY_SHUTTING_DOWN
from tests.resilience.load import until, wait_for_records
from tests.resilience.test_shutdown import serve
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import run_process_server


def write_config(path: Path, upstream: str, database: str, spool: Path) -> Path:
    config = {
        "upstream": {"url": upstream},
        "database": {"url": database, "spool_dir": str(spool)},
        "server": {"shutdown_grace": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def read_slow_stream(sdk: openai.AsyncOpenAI, seen: list[str]) -> tuple[str, Exception]:
    """Read a slow stream until it fails; its request id and the error the SDK raised."""
    async with sdk.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a slow answer"}],
        stream=True,
        extra_headers={"X-Fake-Scenario": "slow,chunks=100", "X-Fake-Delay-Ms": "100"},
    ) as response:
        request_id = response.headers["x-tally-request-id"]
        try:
            async for chunk in await response.parse():
                seen.extend(c.delta.content or "" for c in chunk.choices)
        except Exception as exc:  # the error is what the test looks at
            return request_id, exc
    raise AssertionError("the stream ended without an error")


async def test_a_stream_cut_by_the_shutdown_gets_an_error_event_and_its_record_says_why(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml", fake_upstream.base_url, database_url, tmp_path / "spool"
    )
    argv, port = serve(config)
    server_log = tmp_path / "server.log"
    sdk = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=30
    )
    seen: list[str] = []
    async with sdk:
        with run_process_server(argv, port, log_path=server_log) as process:
            reading = asyncio.create_task(read_slow_stream(sdk, seen))
            await until(lambda: len(seen) >= 3)
            process.send_signal(signal.SIGTERM)  # ~10 s of stream left, 1 s of grace
            request_id, error = await reading
            code = await asyncio.to_thread(process.wait, 15)
    assert code in (0, -signal.SIGTERM)
    assert isinstance(error, openai.APIError), repr(error)
    assert PROXY_SHUTTING_DOWN in error.message
    assert 3 <= len(seen) < 100
    output = server_log.read_text()
    assert "Traceback" not in output and "CancelledError" not in output, output[-3000:]
    record = await record_after_restart(config, request_id)
    assert record["error"] == PROXY_SHUTTING_DOWN
    assert record["usage_source"] == "partial" and record["completion_tokens"] >= 1


async def record_after_restart(config: Path, request_id: str) -> dict[str, object]:
    argv, port = serve(config)
    with run_process_server(argv, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            await wait_for_records(api, 1, within=10)
            response = await api.get(f"/usage/requests/{request_id}")
    assert response.status_code == 200
    record: dict[str, object] = response.json()
    return record
