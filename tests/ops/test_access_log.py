"""The access log of a real proxy process: recorded requests and those that leave no record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import openai

from proxy.requestlog import AccessLine, unrecorded_fields
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_process_server


def test_a_text_line_shows_missing_values_as_dashes() -> None:
    line = str(AccessLine(unrecorded_fields("GET", "/nowhere", 404, 1.4)))
    assert line == (
        "GET /nowhere 404 model=- tokens_in=- tokens_out=- cost_usd=- latency_ms=1 "
        "session=- user=- record=-"
    )


async def served_log(upstream: FakeUpstream, tmp_path: Path, *flags: str) -> tuple[str, list[str]]:
    port = free_port()
    env = {
        "TALLYPROXY_UPSTREAM_URL": upstream.base_url,
        "TALLYPROXY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db",
    }
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "proxy", "serve", "--port", str(port), *flags]
    with run_process_server(command, port, env, log_path=log, cwd=tmp_path):
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-secret-key", max_retries=0
        ) as sdk:
            answer = await sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "a secret prompt"}],
                extra_headers={"X-Session-Id": "s-log", "X-User-Id": "u-log"},
            )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/nowhere")).status_code == 404
    text = log.read_text()
    assert "sk-secret-key" not in text and "a secret prompt" not in text
    return answer.headers["x-tally-request-id"], text.splitlines()


async def test_text_lines_for_a_record_and_for_a_404(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    record_id, lines = await served_log(fake_upstream, tmp_path)
    access = [line for line in lines if "tallyproxy.access" in line]
    usage = fake_upstream.usage
    assert any(
        "POST /v1/chat/completions 200 model=gpt-4o-mini "
        f"tokens_in={usage.prompt_tokens} tokens_out={usage.completion_tokens}"
        in line
        and f"session=s-log user=u-log record={record_id}" in line
        for line in access
    ), access
    assert any("GET /nowhere 404 model=-" in line and "record=-" in line for line in access)


async def test_json_lines_for_log_shippers(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    record_id, lines = await served_log(fake_upstream, tmp_path, "--log-format", "json")
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    access = {entry["path"]: entry for entry in parsed if entry["logger"] == "tallyproxy.access"}
    assert access["/v1/chat/completions"]["record"] == record_id
    assert access["/v1/chat/completions"]["session"] == "s-log"
    assert access["/nowhere"]["status"] == 404
    assert any("ready" in entry.get("message", "") for entry in parsed)
