"""How many records/s one Postgres stores, from 1, 2 and 4 concurrent writers.

    python benchmarks/ingest.py [--writers 1 2 4] [--batch 20 500] [--seconds 15]
                                [--database-url URL] [--prefill 0]

Each writer is a process calling ``proxy.store.rows.write_records`` (what ``RecordWriter``
calls for every batch: COPY of the new rows, the session totals, budgets, and whatever else
this checkout's writer keeps in the same transaction, e.g. rollups) in a loop, with batches
of ``--batch`` realistic records (``synthetic.py``: users, sessions, models, properties,
costs vary; fresh ids). ``--batch 500`` is a writer under full load (``database.max_batch``),
small batches are a writer at moderate load. Prints per case records/s, the CPU time per
1,000 records of the Postgres server and of the writers, from which the records/s of a
dedicated database with more cores follows (the machine running this may be shared), and
the WAL and the growth of the database (tables and indexes) per record, for disks.

Uses a throwaway local PostgreSQL (the tests' settings: durability off, so the figures are
CPU, not disk), or ``--database-url`` (then the server's CPU is not measured), or with
``--reuse DIR`` the Postgres that ``query_scale.py --keep DIR`` kept, so that the writes go
into a table of millions of rows (they stay there). The table grows over the run;
``--prefill N`` stores N records first. No assertions: a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import multiprocessing
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from overhead import process_tree  # noqa: E402
from scale_db import KeptPostgres, migrate, query_value  # noqa: E402
from synthetic import Shape, Synthetic, now, to_record  # noqa: E402

from proxy.records import RequestRecord  # noqa: E402

TEMPLATES = 20_000
# Everything the writes add to the disk: requests (and its partitions), sessions, rollups.
GROWTH = (
    "SELECT ROW(pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'), pg_database_size(current_database()))"
)


@dataclass
class Case:
    writers: int
    batch: int
    records: int
    seconds: float
    postgres_cpu: float | None
    writers_cpu: float
    wal_bytes: int
    database_bytes: int
    """Growth of the database: every table the writer writes, with indexes."""

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def per_thousand(self, cpu: float | None) -> float | None:
        return None if cpu is None else cpu / max(1, self.records) * 1000


def templates(count: int, seed: int) -> list[RequestRecord]:
    """``count`` records shaped like production's, from the last hours of synthetic data."""
    synthetic = Synthetic(Shape(records=count * 30 * 24 // 6, end=now(), seed=seed))
    rows: list[dict[str, Any]] = []
    for hour in range(len(synthetic.hour_counts) - 1, -1, -1):
        rows += synthetic.hour(hour)
        if len(rows) >= count:
            break
    return [to_record(row) for row in rows[:count]]


def fresh(template: RequestRecord, rand: random.Random) -> RequestRecord:
    """A copy with a new id and the current time, as the proxy would make it now."""
    record = copy.copy(template)
    record.created_at = datetime.now(UTC)
    record.id = f"{time.time_ns() // 1_000_000:012x}{rand.getrandbits(80):020x}"
    return record


def writer(
    url: str, batch: int, seconds: float, seed: int, start: Any, results: Any
) -> None:  # fmt: skip
    """One writer process: its own engine, batches in a loop until the time is up."""
    from proxy.store.engine import create_engine
    from proxy.store.rows import write_records

    pool = templates(TEMPLATES, seed)
    rand = random.Random(seed)

    async def run() -> tuple[int, float]:
        engine = create_engine(url)
        stored, cpu = 0, 0.0
        try:
            await write_records(engine, [fresh(pool[0], rand)])  # connect before the clock
            start.wait()
            cpu = time.process_time()
            deadline = time.perf_counter() + seconds
            offset = 0
            while time.perf_counter() < deadline:
                chunk = [fresh(pool[(offset + i) % len(pool)], rand) for i in range(batch)]
                offset += batch
                stored += await write_records(engine, chunk)
            cpu = time.process_time() - cpu
        finally:
            await engine.dispose()
        return stored, cpu

    results.put(asyncio.run(run()))


def run_case(
    url: str, postmaster: int | None, writers: int, batch: int, seconds: float
) -> Case:  # fmt: skip
    context = multiprocessing.get_context("fork")
    start = context.Barrier(writers + 1)
    results = context.Queue()
    processes = [
        context.Process(target=writer, args=(url, batch, seconds, 1000 + i, start, results))
        for i in range(writers)
    ]
    for process in processes:
        process.start()
    start.wait()
    began = time.perf_counter()
    postgres_before = server_cpu(postmaster) if postmaster else 0.0
    wal_before, size_before = query_value(url, GROWTH)
    done = [results.get(timeout=seconds + 300) for _ in processes]
    elapsed = time.perf_counter() - began
    for process in processes:
        process.join(60)
    postgres_cpu = server_cpu(postmaster) - postgres_before if postmaster else None
    wal_after, size_after = query_value(url, GROWTH)
    stored, cpu = (sum(values) for values in zip(*done, strict=True))
    return Case(
        writers, batch, int(stored), elapsed, postgres_cpu, cpu,
        int(wal_after - wal_before), int(size_after - size_before),
    )  # fmt: skip


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the server: its live processes, and the backends it reaped (whose time
    the kernel adds to the postmaster's children's time)."""
    total = 0
    for pid in process_tree(postmaster):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if pid == postmaster:
            total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def prefill(url: str, count: int) -> None:
    if count <= 0:
        return
    print(f"prefill: {count:,} records", flush=True)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = context.Barrier(1)
    # One writer, big batches, until ``count`` are stored: the same path as the cases.
    while count > 0:
        chunk_seconds = 5.0
        process = context.Process(target=writer, args=(url, 500, chunk_seconds, 7, start, results))
        process.start()
        count -= results.get(timeout=600)[0]
        process.join(60)


def postmaster_pid(server: Any) -> int | None:
    if server is None:
        return None
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def print_case(case: Case) -> None:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 1000:.0f}"

    print(
        f"{case.writers:>7} {case.batch:>6} {case.rate:>10,.0f} "
        f"{ms(case.per_thousand(case.postgres_cpu)):>14} "
        f"{ms(case.per_thousand(case.writers_cpu)):>14} "
        f"{case.wal_bytes / max(1, case.records):>10,.0f} "
        f"{case.database_bytes / max(1, case.records):>10,.0f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, nargs="+", default=[20, 500])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--database-url", help="default: a throwaway local PostgreSQL")
    parser.add_argument("--prefill", type=int, default=0, help="records stored first")
    parser.add_argument(
        "--reuse", type=Path, metavar="DIR", help="write into query_scale.py's kept Postgres DIR"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    server: Any = None
    url = args.database_url
    if args.reuse is not None:
        # The kept database of query_scale.py: writes into a table of millions of rows.
        server = KeptPostgres(args.reuse / "postgres", {})
        server.start()
        url = server.url("qscale")
    elif url is None:
        from tests.support.postgres import PostgresServer

        server = PostgresServer()
        server.start()
        url = server.url(server.create_database())
    try:
        migrate(url)
        prefill(url, args.prefill)
        cases = []
        if not args.json:
            print(f"{multiprocessing.cpu_count()} CPUs; CPU ms per 1,000 records:")
            print(f"{'writers':>7} {'batch':>6} {'records/s':>10} {'postgres CPU':>14} "
                  f"{'writers CPU':>14} {'WAL B/rec':>10} {'disk B/rec':>10}")  # fmt: skip
        for batch in args.batch:
            for writers in args.writers:
                case = run_case(url, postmaster_pid(server), writers, batch, args.seconds)
                cases.append(case)
                if not args.json:
                    print_case(case)
        if args.json:
            print(json.dumps([{**case.__dict__, "records_per_second": case.rate}
                              for case in cases], indent=2))  # fmt: skip
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
