"""Postgres stopped and the spool's disk full under load, then Postgres back.

The spool lives on a real tmpfs of 512 KiB (a few hundred records), far below
``spool_max_bytes``: the disk fills, not the spool's bound. The load is the official openai
SDK, streamed and not. Afterwards every answered request must be stored or counted as lost in
``/metrics``, nothing stored that was not answered (no phantom record), no duplicates, and
nothing lost once the writer has seen Postgres back. With ``when_unrecordable: refuse`` the
requests that could not be recorded get a 503 instead, and none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RunningProxy, proxy_settings, start_proxy
from tests.resilience.load import stored_records, until
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PostgresServer
from tests.support.tmpfs import small_tmpfs

log = logging.getLogger(__name__)

DISK_BYTES = 512 * 1024
QUEUE_SIZE = 300
# SQLite's and the spool's disk: SQLite checkpoints its WAL into the database at 1,000 pages
# (4 MiB), and some 600 records with their rollup cells make ~3.6 MiB of WAL. On a 4 MiB disk
# the WAL itself filled it after the filler had gone (the database was full, not the test's
# doing), whenever a loaded machine let the load send more before the disk filled.
SQLITE_DISK_BYTES = 16 * 1024 * 1024
CONCURRENCY = 8
AFTER_RECOVERY = 300  # requests sent once the writer has seen Postgres back


@dataclass
class SdkLoad:
    sent: int = 0
    answered: list[str] = field(default_factory=list)
    refused: int = 0  # 503 records_unavailable
    failed: list[str] = field(default_factory=list)  # anything else: must stay empty


async def one_request(sdk: openai.AsyncOpenAI, index: int, load: SdkLoad) -> None:
    load.sent += 1
    messages: Any = [{"role": "user", "content": f"request {index}"}]
    try:
        if index % 2:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages
            )
            raw.parse()
        else:
            raw_stream = await sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
            async for _ in raw_stream.parse():
                pass
            raw = raw_stream  # type: ignore[assignment]
    except openai.APIStatusError as exc:
        if exc.status_code == 503 and exc.code == "records_unavailable":
            load.refused += 1
            await asyncio.sleep(0.01)  # as a client honouring Retry-After would back off
            return
        load.failed.append(f"{exc.status_code} {exc.code}")
        return
    load.answered.append(raw.headers["x-tally-request-id"])


async def run_sdk_load(proxy: RunningProxy, load: SdkLoad, keep_going: Callable[[], bool]) -> None:
    counter = iter(range(10**9))

    async def worker() -> None:
        while keep_going():
            await one_request(proxy.sdk, next(counter), load)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def lost_in_metrics(api: httpx.AsyncClient) -> dict[str, float]:
    text = (await api.get("/metrics")).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tallyproxy_records_lost"
        for sample in family.samples
        if sample.name == "tallyproxy_records_lost_total"
    }


async def readyz(api: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await api.get("/readyz")
    return response.status_code, response.json()


async def outage(
    restartable_postgres: PostgresServer,
    proxy: RunningProxy,
    load: SdkLoad,
    disk_full: Callable[[dict[str, Any], dict[str, float]], bool],
) -> dict[str, Any]:
    """Stop Postgres under load until ``disk_full`` says the proxy shows the full disk; start
    it again; keep the load going until AFTER_RECOVERY requests after the writer saw it."""
    seen: dict[str, Any] = {}
    stop_at: list[int] = []
    task = asyncio.create_task(
        run_sdk_load(proxy, load, lambda: not stop_at or load.sent < stop_at[0])
    )
    await until(lambda: len(load.answered) >= 40 or task.done())
    if task.done():
        task.result()
    await asyncio.to_thread(restartable_postgres.stop)
    for _ in range(600):
        status, body = await readyz(proxy.api)
        lost = await lost_in_metrics(proxy.api)
        if disk_full(body, lost):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the spool's disk did not fill: {body}")
    seen["during"] = (status, body, lost)
    seen["answered_down"] = len(load.answered)
    await asyncio.to_thread(restartable_postgres.start)
    seen["lost_at_start"] = sum((await lost_in_metrics(proxy.api)).values())
    for _ in range(600):
        status, body = await readyz(proxy.api)
        if body["database_down_seconds"] is None:
            break
        await asyncio.sleep(0.05)
    seen["lost_at_recovery"] = sum((await lost_in_metrics(proxy.api)).values())
    stop_at.append(load.sent + AFTER_RECOVERY)
    await task
    return seen


async def settled(proxy: RunningProxy) -> dict[str, Any]:
    for _ in range(600):
        status, body = await readyz(proxy.api)
        if status == 200 and not (body["queue_depth"] or body["spool_records"]):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"the writer did not settle: {body}")


@pytest.mark.postgres
@pytest.mark.parametrize("when_unrecordable", ["serve", "refuse"])
async def test_postgres_down_and_the_spool_disk_full_then_postgres_back(
    restartable_postgres: PostgresServer,
    postgres_url: str,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    when_unrecordable: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.store")
    with small_tmpfs(tmp_path / "disk", DISK_BYTES) as disk:
        settings = proxy_settings(
            fake_upstream.base_url,
            postgres_url,
            database__spool_dir=str(disk),
            database__queue_size=QUEUE_SIZE,
            database__max_batch=50,
            database__when_unrecordable=when_unrecordable,
        )
        load = SdkLoad()
        async with start_proxy(settings) as proxy:
            if when_unrecordable == "serve":

                def disk_full(body: dict[str, Any], lost: dict[str, float]) -> bool:
                    return sum(lost.values()) >= 100  # the memory hold overflowed too
            else:

                def disk_full(body: dict[str, Any], lost: dict[str, float]) -> bool:
                    return load.refused >= 100

            seen = await outage(restartable_postgres, proxy, load, disk_full)
            final = await settled(proxy)
            lost = await lost_in_metrics(proxy.api)
            stored = [r["id"] for r in await stored_records(proxy.api)]
        spool_left = list(disk.glob("slot-*/seg-*"))

    status, during, _ = seen["during"]
    answered, stored_ids = set(load.answered), set(stored)
    lost_total = sum(lost.values())
    figures = {
        "mode": when_unrecordable,
        "sent": load.sent,
        "answered": len(load.answered),
        "refused_503": load.refused,
        "stored": len(stored),
        "lost_in_metrics": lost,
        "answered_not_stored": len(answered - stored_ids),
        "phantom": len(stored_ids - answered),
        "duplicates": len(stored) - len(stored_ids),
        "lost_between_start_and_recovery": seen["lost_at_recovery"] - seen["lost_at_start"],
        "lost_after_recovery": lost_total - seen["lost_at_recovery"],
        "spooled_total": final["spooled_total"],
        "replayed_total": final["replayed_total"],
    }
    log.warning("full-disk figures: %s", figures)
    assert load.failed == []
    assert len(answered) == len(load.answered)  # one record id per answer
    # While Postgres was down and the disk full, /readyz said records cannot be stored.
    assert status == 503 and during["recordable"] is False and during["database"] is False
    assert during["spool_bytes"] > 0 and final["spooled_total"] > 0
    # Every answered request is stored, or counted as lost; nothing else is stored.
    assert figures["phantom"] == 0 and figures["duplicates"] == 0
    assert figures["answered_not_stored"] == lost_total
    assert set(lost) <= {"unstorable"}
    assert figures["lost_after_recovery"] == 0
    assert final["held_records"] == 0 and final["recordable"] is True and spool_left == []
    if when_unrecordable == "serve":
        assert lost_total >= 100 and load.refused == 0
    else:
        assert load.refused >= 100 and lost_total == 0
    # Losses and refusals were logged, not traced: no traceback from the writer or spool.
    assert not [r for r in caplog.records if r.name.startswith("proxy.store") and r.exc_info]


def fill_disk(path: Path) -> None:
    """Write ``path`` until the file system has no byte left."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as file:
        while True:
            try:
                file.write(chunk)
            except OSError:
                break
        for size in (4096, 512, 1):  # the last partial pages too
            with contextlib.suppress(OSError):
                while True:
                    file.write(chunk[:size])


@pytest.mark.parametrize("when_unrecordable", ["serve", "refuse"])
async def test_sqlite_and_the_spool_on_one_full_disk_then_room_again(
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    when_unrecordable: str,
) -> None:
    """One small box: SQLite and the spool share a disk that fills (another file takes the
    room). Nothing can be stored until that file is removed; then everything held is."""
    caplog.set_level(logging.WARNING, logger="proxy.store")
    with small_tmpfs(tmp_path / "disk", SQLITE_DISK_BYTES) as disk:
        settings = proxy_settings(
            fake_upstream.base_url,
            f"sqlite+aiosqlite:///{disk}/tally.db",
            database__spool_dir=str(disk / "spool"),
            database__queue_size=QUEUE_SIZE,
            database__max_batch=50,
            database__when_unrecordable=when_unrecordable,
        )
        load = SdkLoad()
        async with start_proxy(settings) as proxy:
            stop_at: list[int] = []
            task = asyncio.create_task(
                run_sdk_load(proxy, load, lambda: not stop_at or load.sent < stop_at[0])
            )
            await until(lambda: len(load.answered) >= 40 or task.done())
            await asyncio.to_thread(fill_disk, disk / "filler")
            for _ in range(600):
                status, during = await readyz(proxy.api)
                if not during["recordable"] and (load.refused or during["lost"]):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"nothing refused on a full disk: {during}")
            (disk / "filler").unlink()  # room again
            stop_at.append(load.sent + AFTER_RECOVERY)
            await task
            final = await settled(proxy)
            lost = await lost_in_metrics(proxy.api)
            stored = [r["id"] for r in await stored_records(proxy.api)]

    answered, stored_ids = set(load.answered), set(stored)
    figures = {
        "mode": when_unrecordable,
        "sent": load.sent,
        "answered": len(load.answered),
        "refused_503": load.refused,
        "stored": len(stored),
        "lost_in_metrics": lost,
        "phantom": len(stored_ids - answered),
        "duplicates": len(stored) - len(stored_ids),
        "held_when_full": during["held_records"],
    }
    log.warning("sqlite full-disk figures: %s", figures)
    assert load.failed == []
    assert status == 503 and during["recordable"] is False
    assert figures["phantom"] == 0 and figures["duplicates"] == 0
    assert len(answered - stored_ids) == sum(lost.values())
    assert final["recordable"] is True and final["held_records"] == 0
    if when_unrecordable == "refuse":
        assert load.refused > 0 and sum(lost.values()) == 0
    else:
        assert load.refused == 0
