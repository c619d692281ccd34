"""Path nodes kept by the writer, moved by reprice, and the 0011 upgrade of older sessions."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from alembic import command
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.pricing import Cost
from proxy.records import RequestRecord
from proxy.store.engine import create_engine
from proxy.store.migrate import alembic_config, upgrade_database
from proxy.store.queries import UsageQueries
from proxy.store.reprice import reprice
from proxy.store.rows import write_records
from proxy.store.tables import session_paths, sessions
from proxy.usage import Usage
from tests.store.factory import T0, make_record


def _run() -> list[RequestRecord]:
    return [
        make_record(minutes=0, session_path=None),
        make_record(minutes=1, session_path="/plan", session_name="Trip"),
        make_record(minutes=2, session_path="/plan/search/1", latency_ms=10.0, tool_calls=2),
        make_record(
            minutes=3,
            session_path="/plan/search/1",
            status_code=502,
            usage=None,
            usage_source=None,
            cost_usd=None,
            error="upstream 502",
        ),
        make_record(minutes=4, session_path="/", session_name="Trip v2", tool_calls=1),
    ]


async def test_the_writer_keeps_each_node_once_however_often_replayed(engine: AsyncEngine) -> None:
    records = _run()
    assert await write_records(engine, records[:3]) == 3
    assert await write_records(engine, records) == 2  # a replay adds only the new ones
    async with engine.connect() as connection:
        nodes = {
            row.path: row
            for row in await connection.execute(
                select(session_paths).where(session_paths.c.session_id == "s1")
            )
        }
    assert set(nodes) == {"/plan", "/plan/search/1"}  # the root "/" has no row
    search = nodes["/plan/search/1"]
    assert (search.requests, search.errors, search.unpriced_requests) == (2, 1, 1)
    assert (search.tool_calls, nodes["/plan"].tool_calls) == (2, 0)
    assert search.cost_usd == records[2].cost_usd
    assert search.latency_ms == 10.0 + records[3].latency_ms
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None
    assert (session["name"], session["errors"], session["requests"]) == ("Trip v2", 1, 5)
    assert session["tool_calls"] == 3
    tree = session["tree"]
    assert tree["own"]["requests"] == 2  # no path, and "/"
    assert tree["total"]["requests"] == 5
    assert tree["total"]["cost_usd"] == session["cost_usd"]
    assert (tree["own"]["tool_calls"], tree["total"]["tool_calls"]) == (1, 3)
    (plan,) = tree["children"]
    assert (plan["own"]["tool_calls"], plan["total"]["tool_calls"]) == (0, 2)


async def test_reprice_moves_the_cost_of_the_node_with_the_session(engine: AsyncEngine) -> None:
    await write_records(engine, _run())

    def doubled(model: str | None, upstream: str, usage: Usage, at: datetime) -> Cost:
        return Cost(Decimal("0.0000050"), "config", None, model)

    report = await reprice(engine, doubled, since=T0 - timedelta(hours=1))
    assert report.changed == 5  # every record: the 502 was not billed, so it costs 0 now
    session = await UsageQueries(engine).get_session("s1")
    assert session is not None
    assert session["cost_usd"] == Decimal("0.0000200")
    (plan,) = session["tree"]["children"]
    assert plan["total"]["cost_usd"] == Decimal("0.0000100")
    search = plan["children"][0]["children"][0]["own"]
    assert (search["cost_usd"], search["unpriced_requests"]) == (Decimal("0.0000050"), 0)


async def test_the_upgrade_counts_the_errors_and_latency_of_stored_sessions(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        records = _run()
        await write_records(engine, records)
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0010"))
            await connection.commit()
        await upgrade_database(engine)
        async with engine.connect() as connection:
            row = (await connection.execute(select(sessions))).one()
        assert (row.errors, row.name) == (1, None)  # names were not stored before
        assert row.latency_ms == sum(r.latency_ms or 0 for r in records)
    finally:
        await engine.dispose()
