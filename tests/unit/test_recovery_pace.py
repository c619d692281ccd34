"""Filing what a killed process left: at the writer's pace, and never holding start-up hostage."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from proxy.app import _record_recovered


@dataclass
class StubWriter:
    recordable: bool = True
    queue_depth: int = 0


@dataclass
class StubSink:
    writer: StubWriter
    submitted: list[Any] = field(default_factory=list)

    def submit(self, item: Any) -> bool:
        self.submitted.append(item)
        self.writer.queue_depth += 1
        return True


async def test_recovered_records_are_submitted_while_the_writer_keeps_up() -> None:
    writer = StubWriter()
    sink = StubSink(writer)

    async def drain() -> None:
        while len(sink.submitted) < 30:
            writer.queue_depth = 0
            await asyncio.sleep(0.005)

    drainer = asyncio.create_task(drain())
    await asyncio.wait_for(_record_recovered(list(range(30)), sink, writer, 10), 10)  # type: ignore[arg-type]
    await drainer
    assert sink.submitted == list(range(30))


async def test_a_writer_that_takes_no_records_does_not_keep_the_proxy_from_serving() -> None:
    writer = StubWriter(recordable=False, queue_depth=10)
    sink = StubSink(writer)
    await asyncio.wait_for(_record_recovered(list(range(30)), sink, writer, 10), 5)  # type: ignore[arg-type]
    assert sink.submitted == []  # left in the journal for the next start
