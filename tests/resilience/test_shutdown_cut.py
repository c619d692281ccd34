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


async def wait_for_slow_answer(sdk: openai.AsyncOpenAI) -> openai.APIStatusError:
    """A non-streamed request whose upstream takes 10 s; the error the SDK raised."""
    try:
        await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a slow answer"}],
            extra_headers={"X-Fake-Scenario": "slow", "X-Fake-Delay-Ms": "10000"},
        )
    except openai.APIStatusError as exc:
        return exc
    raise AssertionError("the request was answered")


async def test_requests_cut_by_the_shutdown_get_an_error_and_their_records_say_why(
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
            waiting = asyncio.create_task(wait_for_slow_answer(sdk))
            await until(lambda: len(seen) >= 3 and len(fake_upstream.requests) >= 2)
            process.send_signal(signal.SIGTERM)  # ~10 s of answers left, 1 s of grace
            request_id, error = await reading
            refused = await waiting
            code = await asyncio.to_thread(process.wait, 15)
    assert code in (0, -signal.SIGTERM)
    assert isinstance(error, openai.APIError), repr(error)
    assert PROXY_SHUTTING_DOWN in error.message
    assert 3 <= len(seen) < 100
    output = server_log.read_text()
    assert "Traceback" not in output and "CancelledError" not in output, output[-3000:]
    assert refused.status_code == 503 and PROXY_SHUTTING_DOWN in refused.message
    refused_id = refused.response.headers["x-tally-request-id"]
    stream, buffered = await records_after_restart(config, request_id, refused_id)
    assert stream["error"] == PROXY_SHUTTING_DOWN
    assert stream["usage_source"] == "partial" and stream["completion_tokens"] >= 1
    assert buffered["error"] == PROXY_SHUTTING_DOWN and buffered["status_code"] == 503


async def records_after_restart(config: Path, *ids: str) -> list[dict[str, object]]:
    argv, port = serve(config)
    records: list[dict[str, object]] = []
    with run_process_server(argv, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            await wait_for_records(api, len(ids), within=10)
            for request_id in ids:
                response = await api.get(f"/usage/requests/{request_id}")
                assert response.status_code == 200, request_id
                records.append(response.json())
    return records
