"""Listing queries before and after partitioning ``requests``, and the migration's time.

    .venv/bin/python benchmarks/partitions.py --rows 4000000 --days 30

Starts a throwaway PostgreSQL (as the tests do), migrates it to revision 0007 (one plain
``requests`` table), fills it with synthetic records over ``--days`` days up to now by
``INSERT ... SELECT generate_series`` (20 models, 1,000 users, 50,000 sessions; and
``model-rare``, 0.1 % of the records, and ``model-old``, used in the first half of the range
only), then prints
for each listing call its p50 and the plan Postgres chose (EXPLAIN ANALYZE), migrates to
0009 (timed: the per-million-rows figure in the README) and prints the same again. With
``--listing-index created_at`` the partitioned table's listing indexes are (model,
created_at), (user_id, created_at) and so on instead of (model, id) ..., to compare the two.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa
from alembic import command
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.engine import create_engine
from proxy.store.migrate import alembic_config, upgrade_database
from proxy.store.queries import UsageQueries
from tests.support.postgres import PostgresServer

PLAN_LINES = 24
FILL = """
INSERT INTO requests (id, created_at, endpoint, method, status_code, stream, model,
    response_model, upstream, session_id, user_id, properties, prompt_tokens,
    completion_tokens, total_tokens, usage_source, cost_usd, latency_ms, key_id)
SELECT lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0')
           || lpad(to_hex(n), 20, '0'),
       t, '/v1/chat/completions', 'POST', 200, n % 3 = 0,
       CASE WHEN n % 1000 = 0 THEN 'model-rare'
            WHEN n % 10 = 1 AND n < CAST(:rows AS int) / 2 THEN 'model-old'
            ELSE 'model-' || (n % 20) END,
       'model-' || (n % 20) || '-2025', 'https://api.openai.com/v1', 'session-' || (n % 50000),
       'user-' || ((n * 7) % 1000), json_build_object('env', CASE WHEN n % 4 = 0 THEN 'dev'
       ELSE 'prod' END), 100 + n % 50, 20 + n % 30, 120 + n % 50 + n % 30, 'provider',
       0.000123, 300 + n % 700, 'key' || (n % 40)
FROM (SELECT n, CAST(:start AS timestamptz) + CAST(:span AS interval) * n / CAST(:rows AS int) AS t
      FROM generate_series(1, CAST(:rows AS int)) n) s
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--listing-index", choices=["id", "created_at"], default="id")
    return parser.parse_args()


def calls(queries: UsageQueries, now: datetime, some_id: str) -> dict[str, Callable[[], Any]]:
    day_ago = now - timedelta(days=1)
    return {
        "/usage/requests?model=M&since=<1 day ago>": lambda: queries.list_requests(
            model="model-7", since=day_ago
        ),
        "/usage/requests?model=<0.1 % of records>&since=<1 day ago>": lambda: queries.list_requests(
            model="model-rare", since=day_ago
        ),
        "/usage/requests?model=<none in the last day>&since=<1 day ago>": lambda: (
            queries.list_requests(model="model-old", since=day_ago)
        ),
        "/usage/requests (newest 100)": lambda: queries.list_requests(),
        "/usage/requests?user_id=U&since=<1 day ago>": lambda: queries.list_requests(
            user_id="user-7", since=day_ago
        ),
        "/usage/requests?session_id=S": lambda: queries.list_requests(session_id="session-7"),
        "/usage/requests/{id}": lambda: queries.get_request(some_id),
    }


async def measure(engine: AsyncEngine, now: datetime, runs: int) -> None:
    async with engine.connect() as connection:  # a record from the middle of the range
        some_id = await connection.scalar(
            sa.text(
                "SELECT id FROM requests ORDER BY id "
                "OFFSET (SELECT count(*) / 2 FROM requests) LIMIT 1"
            )
        )
    queries = UsageQueries(engine)
    for name, call in calls(queries, now, str(some_id)).items():
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await call()
            times.append((time.perf_counter() - started) * 1000)
        print(f"\n## {name}: p50 {statistics.median(times):.2f} ms, max {max(times):.2f} ms")
        print(await explain(engine, queries, call))


async def explain(engine: AsyncEngine, queries: UsageQueries, call: Callable[[], Any]) -> str:
    """EXPLAIN ANALYZE of the statement ``call`` runs, caught on its way to the database."""
    caught: list[Any] = []
    real = queries._fetch

    async def catch(query: Any) -> list[dict[str, Any]]:
        caught.append(query)
        return await real(query)

    queries._fetch = catch  # type: ignore[method-assign]
    try:
        await call()
    finally:
        queries._fetch = real  # type: ignore[method-assign]
    compiled = caught[0].compile(dialect=postgresql.asyncpg.dialect())
    params = compiled.construct_params()
    values = [params[name] for name in compiled.positiontup]
    async with engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        rows = await raw.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {compiled.string}", *values)
    lines = [row[0] for row in rows]
    if len(lines) > PLAN_LINES:  # one scan per partition: the first few tell the story
        tail = [line for line in lines if line.startswith(("Planning Time", "Execution Time"))]
        lines = [*lines[:PLAN_LINES], f"... ({len(lines) - PLAN_LINES} more lines)", *tail]
    return "\n".join("    " + line for line in lines)


async def timed(what: str, step: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await step
    seconds = time.perf_counter() - started
    print(f"{what}: {seconds:.1f} s", flush=True)
    return seconds


async def main(args: argparse.Namespace) -> None:
    server = PostgresServer()
    server.start()
    try:
        engine = create_engine(server.url(server.create_database()))
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0007"))
            await connection.commit()
        now = datetime.now(UTC)
        span = timedelta(days=args.days)
        print(f"# {args.rows:,} records over {args.days:g} days\n")

        async def fill() -> None:
            async with engine.begin() as connection:
                await connection.execute(
                    sa.text(FILL), {"start": now - span, "span": span, "rows": args.rows}
                )
                await connection.execute(sa.text("ANALYZE requests"))

        await timed("fill (revision 0007)", fill())
        print("\n# before: one table, indexes on model, user_id, session_id, created_at, key_id")
        await measure(engine, now, args.runs)
        seconds = await timed("\nmigration to 0009", upgrade_database(engine))
        print(f"  = {seconds / args.rows * 1e6:.1f} s per million rows")
        if args.listing_index == "created_at":
            async with engine.begin() as connection:
                for column in ("model", "user_id", "key_id", "session_id"):
                    await connection.execute(sa.text(f"DROP INDEX ix_requests_{column}_id"))
                    await connection.execute(
                        sa.text(f"CREATE INDEX ix_{column}_at ON requests ({column}, created_at)")
                    )
                await connection.execute(sa.text("ANALYZE requests"))
        print(f"\n# after: partitioned by day, (model, {args.listing_index}) and so on")
        await measure(engine, now, args.runs)
        await engine.dispose()
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
