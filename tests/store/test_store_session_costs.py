"""Session costs beside a real writer and database (SQLite and Postgres).

The running total must stay exact while the writer commits batches underneath it, and a busy
session must not keep the ids of records the writer already confirmed.
"""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.records import RequestRecord
from proxy.session_costs import SessionCosts
from proxy.store.spool import Spool
from proxy.store.writer import RecordWriter
from tests.store.factory import identity, make_record


async def test_running_total_stays_exact_while_the_writer_commits(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    costs = SessionCosts(engine, timeout=5, refresh=0)  # a read whenever none is on its way
    writer: RecordWriter[RequestRecord] = RecordWriter(
        engine,
        identity,
        spool=Spool(tmp_path / "spool", 10**8),
        on_stored=costs.confirm_stored,
        linger=0.001,
    )
    await writer.start()
    rng = random.Random(7)
    expected = Decimal(0)
    try:
        for n in range(400):
            cost = Decimal(rng.randrange(1, 10**6)) / 10**12
            record = make_record(session_id="busy", cost_usd=cost)
            expected += cost
            costs.note("busy", record.id, cost)  # as the proxy does: noted, then submitted
            writer.submit(record)
            total = await costs.total("busy")
            assert total == expected, n
            if n % 7 == 0:
                await asyncio.sleep(rng.choice([0, 0.001, 0.005]))  # let batches commit
    finally:
        await writer.stop(timeout=5)  # drains the queue: every record is committed
    session = costs._sessions["busy"]
    assert session.pending == {}  # every id confirmed by the writer: none kept
    assert await costs.total("busy") == expected
    await costs.close()
    assert await costs.total("busy") == expected  # a last read, awaited below
    assert session.reading is not None
    await session.reading
    assert session.stored == expected  # the database agrees


async def test_postgres_asks_for_any_number_of_ids_with_one_statement(
    postgres_engine: AsyncEngine,
) -> None:
    # IN (...) rendered a statement per count of ids, and asyncpg prepared and kept each one:
    # a busy session's reads grew the process by about a megabyte each.
    costs = SessionCosts(postgres_engine)

    def sql(ids: list[str]) -> str:
        statement = costs._statement("s", ids)
        compiled = statement.compile(
            dialect=postgres_engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        return str(compiled)

    assert sql(["a"]) == sql([f"r{n}" for n in range(500)])
    record = make_record(session_id="s", cost_usd=Decimal("0.25"))
    costs.note("s", record.id, Decimal("0.25"))
    assert await costs.total("s") == Decimal("0.25")  # the array form runs, too
    await costs.close()
