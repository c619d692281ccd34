"""A second Ctrl-C (or SIGTERM) during a stream: the streams are cut at once, records kept."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import openai
import pytest
import yaml

from proxy.records import PROXY_SHUTTING_DOWN
from tests.resilience.load import until
from tests.resilience.test_shutdown import serve
from tests.resilience.test_shutdown_cut import read_slow_stream, records_after_restart
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import run_process_server


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_second_signal_cuts_the_streams_and_keeps_their_records(
    sig: signal.Signals, fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": {"url": fake_upstream.base_url},
                "database": {"url": database_url, "spool_dir": str(tmp_path / "spool")},
                # Longer than the test waits for the exit: only the second signal ends it.
                "server": {"shutdown_grace": 120},
            }
        )
    )
    argv, port = serve(config)
    server_log = tmp_path / "server.log"
    sdk = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=60
    )
    seen: list[str] = []
    async with sdk:
        with run_process_server(argv, port, log_path=server_log) as process:
            reading = asyncio.create_task(read_slow_stream(sdk, seen))
            await until(lambda: len(seen) >= 3)
            process.send_signal(sig)
            await until(lambda: "Waiting for connections to close" in server_log.read_text())
            process.send_signal(sig)
            request_id, error = await reading
            code = await asyncio.to_thread(process.wait, 30)
    assert code in (0, -sig)
    assert isinstance(error, openai.APIError) and PROXY_SHUTTING_DOWN in error.message
    output = server_log.read_text()
    assert "Traceback" not in output and "is the database reachable" not in output, output[-3000:]
    assert "second signal: cutting 1 request(s)" in output
    (stream,) = await records_after_restart(config, request_id)
    assert stream["error"] == PROXY_SHUTTING_DOWN and stream["usage_source"] == "partial"
