"""How long ``GET /usage/sessions/{id}`` takes for an agent run with a deep path tree.

    python benchmarks/session_tree.py [--requests 10000] [--nodes 500] [--repeat 50]

Writes one session of ``--requests`` records spread over ``--nodes`` path nodes (three levels:
``/step-N/tool-M/try-K``) with the proxy's own writer, to a fresh SQLite file and a fresh
local Postgres (the server binaries the tests use), then times the session lookup the API
makes (totals, per-model breakdown, tree) and prints p50/p99 per database. A benchmark, not
a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.store.engine import create_engine  # noqa: E402
from proxy.store.migrate import upgrade_database  # noqa: E402
from proxy.store.queries import UsageQueries  # noqa: E402
from proxy.store.rows import write_records  # noqa: E402
from tests.store.factory import T0, make_record  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402


def paths(nodes: int) -> list[str]:
    """``nodes`` distinct paths, three levels deep, as an agent's plan/tool/retry steps."""
    found: list[str] = []
    step = 0
    while len(found) < nodes:
        for tool in range(5):
            for attempt in range(4):
                found.append(f"/step-{step}/tool-{tool}/try-{attempt}")
        step += 1
    return found[:nodes]


async def measure(url: str, requests: int, nodes: int, repeat: int) -> tuple[float, float]:
    engine = create_engine(url)
    try:
        await upgrade_database(engine)
        rand = random.Random(7)
        names = paths(nodes)
        template = make_record(session_id="agent-run")
        records = [
            replace(
                template,
                id=f"{n:032x}",
                created_at=T0,
                session_path=rand.choice(names),
                model=rand.choice(["gpt-4o", "gpt-4o-mini", "o4-mini"]),
            )
            for n in range(requests)
        ]
        for start in range(0, requests, 1000):
            await write_records(engine, records[start : start + 1000])
        queries = UsageQueries(engine)
        for _ in range(5):  # warm-up
            await queries.get_session("agent-run")
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            session = await queries.get_session("agent-run")
            timings.append((time.perf_counter() - started) * 1000)
        assert session is not None and session["tree"]["total"]["requests"] == requests
        return statistics.median(timings), statistics.quantiles(timings, n=100)[98]
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite+aiosqlite:///{tmp}/tree.db"}
        server = PostgresServer()
        server.start()
        try:
            urls["postgres"] = server.url(server.create_database())
            for name, url in urls.items():
                p50, p99 = asyncio.run(measure(url, args.requests, args.nodes, args.repeat))
                print(f"{name:8} {args.requests} requests, {args.nodes} nodes: "
                      f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
        finally:
            server.stop()


if __name__ == "__main__":
    main()
