"""Start-up: what the app prepares before it reports ready, so that requests do not wait."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from proxy import tokens
from tests.e2e.conftest import proxy_settings, start_proxy
from tests.support.fake_upstream import FakeUpstream


async def test_the_default_tokenizer_is_loaded_before_the_first_request(
    fake_upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[tuple[str, bool]] = []
    real = tokens.load_builtin

    def recording(name: str) -> tokens.Tokenizer:
        loads.append((name, threading.current_thread() is threading.main_thread()))
        return real(name)

    monkeypatch.setattr(tokens, "load_builtin", recording)
    settings = proxy_settings(
        fake_upstream.base_url,
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        metering__drift_sample_rate=1,
    )
    async with start_proxy(settings) as proxy:
        assert loads == [("o200k_base", False)]  # in a worker thread, off the event loop
        await proxy.sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
        (record,) = await proxy.records(1)
    assert record["estimated_prompt_tokens"] is not None
    assert loads == [("o200k_base", False)]
