"""How fast ``tallyproxy rollups rebuild`` recomputes rollups from raw rows.

    python benchmarks/rebuild_scale.py [--records 10000000] [--days 30] [--database-url URL]

Fills ``requests`` of a throwaway PostgreSQL (or ``--database-url``, Postgres or SQLite) with
synthetic records spread over ``--days`` days (50,000 sessions, each of one of 1,000 users
with their key, one of 20 models and an ``env`` property; 10 % embeddings, 1 % errors, 2 %
unpriced), inserted by SQL as an import would (no rollups), then rebuilds the
rollups from them with the progress line the command prints, and reports records/s.
A benchmark, not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from proxy.commands.rollups import ProgressLine, format_rebuild_report  # noqa: E402
from proxy.store.engine import create_engine  # noqa: E402
from proxy.store.migrate import upgrade_database  # noqa: E402
from proxy.store.rebuild import rebuild_rollups  # noqa: E402

FILL_BATCH = 1_000_000

# One statement per batch: the records are made by the database, not shipped from Python.
POSTGRES_FILL = """
INSERT INTO requests (id, created_at, endpoint, method, status_code, stream, model,
    upstream, session_id, user_id, properties, prompt_tokens, completion_tokens, total_tokens,
    cost_usd, latency_ms, key_id)
SELECT lpad(to_hex(g), 32, '0'),
    now() - (CAST(:days AS int) * interval '1 day') * (g::float8 / CAST(:total AS bigint)),
    CASE WHEN g % 10 = 0 THEN '/v1/embeddings' ELSE '/v1/chat/completions' END,
    'POST', CASE WHEN g % 97 = 0 THEN 429 ELSE 200 END, false,
    'model-' || (g * 104729 % 50000 / 1000 % 20), 'https://api.openai.com/v1',
    's' || (g * 104729 % 50000), 'u' || (g * 104729 % 50000 % 1000),
    json_build_object('env', CASE g * 104729 % 50000 % 3 WHEN 0 THEN 'prod' WHEN 1 THEN 'dev'
        ELSE 'ci' END),
    100 + g % 900, g % 300, 100 + g % 900 + g % 300,
    CASE WHEN g % 50 = 0 THEN NULL ELSE (g % 1000) * 0.000001 END,
    50 + g % 2000, 'k' || (g * 104729 % 50000 % 1000)
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g
"""

SQLITE_FILL = """
WITH RECURSIVE s(g) AS (SELECT :first UNION ALL SELECT g + 1 FROM s WHERE g < :last)
INSERT INTO requests (id, created_at, endpoint, method, status_code, stream, model,
    upstream, session_id, user_id, properties, prompt_tokens, completion_tokens, total_tokens,
    cost_usd, latency_ms, key_id)
SELECT printf('%032x', g),
    strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%f seconds', :days * 86400.0 * g / :total)),
    CASE WHEN g % 10 = 0 THEN '/v1/embeddings' ELSE '/v1/chat/completions' END,
    'POST', CASE WHEN g % 97 = 0 THEN 429 ELSE 200 END, 0,
    'model-' || (g * 104729 % 50000 / 1000 % 20), 'https://api.openai.com/v1',
    's' || (g * 104729 % 50000), 'u' || (g * 104729 % 50000 % 1000),
    json_object('env', CASE g * 104729 % 50000 % 3 WHEN 0 THEN 'prod' WHEN 1 THEN 'dev'
        ELSE 'ci' END),
    100 + g % 900, g % 300, 100 + g % 900 + g % 300,
    CASE WHEN g % 50 = 0 THEN NULL ELSE (g % 1000) * 1000000 END,
    50 + g % 2000, 'k' || (g * 104729 % 50000 % 1000)
FROM s
"""


async def fill(url: str, records: int, days: int) -> None:
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        await upgrade_database(engine)
        statement = text(POSTGRES_FILL if engine.dialect.name == "postgresql" else SQLITE_FILL)
        started = time.perf_counter()
        for first in range(1, records + 1, FILL_BATCH):
            last = min(records, first + FILL_BATCH - 1)
            async with engine.begin() as connection:
                await connection.execute(
                    statement, {"first": first, "last": last, "total": records, "days": days}
                )
            print(f"filled {last:,} records in {time.perf_counter() - started:.0f} s", flush=True)
        if engine.dialect.name == "postgresql":
            async with engine.connect() as connection:
                await connection.execute(text("ANALYZE requests"))
                await connection.commit()
    finally:
        await engine.dispose()


async def rebuild(url: str) -> None:
    engine = create_engine(url)
    try:
        show = ProgressLine(sys.stderr)
        report = await rebuild_rollups(engine, progress=show)
        show.finish()
        print(format_rebuild_report(report))
    finally:
        await engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--database-url", help="default: a throwaway local PostgreSQL")
    parser.add_argument("--no-fill", action="store_true", help="rebuild what is there")
    args = parser.parse_args()
    server = None
    url = args.database_url
    if url is None:
        from tests.support.postgres import PostgresServer

        server = PostgresServer()
        server.start()
        url = server.url(server.create_database())
    try:
        if not args.no_fill:
            asyncio.run(fill(url, args.records, args.days))
        asyncio.run(rebuild(url))
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
