"""A 30-day reconciliation over N records: the rollup read, the comparison, and the whole
round (the provider's report paged over HTTP from the fake report server as well).

    python benchmarks/reconcile_scale.py [--records 1000000] [--database postgres|sqlite]
                                         [--keep DIR | --reuse DIR] [--repeat 10]

Fills the database as ``query_scale.py`` does (synthetic records over 30 days, COPY or
``executemany``, then ``tallyproxy rollups rebuild``), and times, for days and for hours:
``local_totals`` (the ``upstream_model`` cells of the ``openai`` upstream), ``compare``
against a report with the same traffic, and fetch + read + compare as ``tallyproxy
reconcile`` runs them, against the fake report server on this machine. A benchmark, not a
test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from query_scale import open_database, prepare  # noqa: E402
from synthetic import now  # noqa: E402

from proxy.reconcile.compare import aligned, compare  # noqa: E402
from proxy.reconcile.fetch import ReportFetcher  # noqa: E402
from proxy.reconcile.local import local_totals  # noqa: E402
from proxy.reconcile.reports import UsageRow  # noqa: E402
from proxy.store.engine import create_engine  # noqa: E402
from tests.support.fake_reports import OPENAI_KEY, Traffic, run_fake_reports  # noqa: E402

UPSTREAM = "openai"  # what synthetic records name as their upstream


async def measure(url: str, repeat: int, width: str) -> dict[str, float]:
    engine = create_engine(url)
    end = now()
    since, until = aligned(end - timedelta(days=30), end, width)  # type: ignore[arg-type]
    step = timedelta(days=1) if width == "1d" else timedelta(hours=1)
    timings: dict[str, list[float]] = {"read": [], "compare": [], "round": []}
    try:
        cells = await local_totals(engine, [UPSTREAM], since, until, width)  # type: ignore[arg-type]
        usage = [
            UsageRow(c.start, c.start + step, c.model, "proj", None, c.requests,
                     c.input_tokens, c.cached_input_tokens, c.output_tokens)
            for c in cells
        ]  # fmt: skip
        with run_fake_reports() as fake:
            fake.traffic = [
                Traffic(c.start, c.model or "", c.requests, c.input_tokens,
                        c.cached_input_tokens, c.output_tokens)
                for c in cells
            ]  # fmt: skip
            fetcher = ReportFetcher("openai", OPENAI_KEY, fake.url)
            for _ in range(repeat):
                started = time.perf_counter()
                cells = await local_totals(engine, [UPSTREAM], since, until, width)  # type: ignore[arg-type]
                timings["read"].append(time.perf_counter() - started)
                started = time.perf_counter()
                compare("openai", width, since, until, usage, [], cells, closed_before=end)  # type: ignore[arg-type]
                timings["compare"].append(time.perf_counter() - started)
                started = time.perf_counter()
                report = await fetcher.report(since, until, width)  # type: ignore[arg-type]
                local = await local_totals(engine, [UPSTREAM], since, until, width)  # type: ignore[arg-type]
                compare("openai", width, since, until, report.usage, report.costs, local,  # type: ignore[arg-type]
                        closed_before=end)  # fmt: skip
                timings["round"].append(time.perf_counter() - started)
        print(f"{width}: {len(cells)} local cells, {len(usage)} report rows")
    finally:
        await engine.dispose()
    return {name: median(values) * 1000 for name, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--database-name", default="rscale", help=argparse.SUPPRESS)
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument("--keep", type=Path, metavar="DIR", help="fill into DIR and keep it")
    kept.add_argument("--reuse", type=Path, metavar="DIR", help="measure a kept DIR, no fill")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--shared-buffers", default="64MB")
    args = parser.parse_args()
    args.rebuild, args.json = False, False
    tmp = Path(tempfile.mkdtemp(prefix="tally-rscale-"))
    tmp.chmod(0o755)
    directory = args.reuse or args.keep or tmp / "db"
    directory.mkdir(parents=True, exist_ok=True)
    server: Any = None
    try:
        url, server = open_database(args, directory)
        meta = prepare(args, directory, url)
        print(f"{meta['records']:,} records on {args.database}")
        for width in ("1d", "1h"):
            result = asyncio.run(measure(url, args.repeat, width))
            print("  " + "  ".join(f"{name} p50 {ms:.1f} ms" for name, ms in result.items()))
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
