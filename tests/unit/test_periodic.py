"""A background job's loop survives its failures: expected ones as one line, others with a
traceback, and goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.periodic import Periodic


async def test_failures_are_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("connection refused")
        if calls == 2:
            raise ValueError("a bug")

    loop = Periodic("test job", step, 0.01, expected=(OSError,))
    with caplog.at_level(logging.WARNING, logger="proxy.periodic"):
        loop.start()
        for _ in range(200):
            if calls >= 3:
                break
            await asyncio.sleep(0.01)
        await loop.stop()
    assert calls >= 3
    refused, bug = caplog.records[:2]
    assert refused.levelno == logging.WARNING and refused.exc_info is None
    assert "test job: connection refused" in refused.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
