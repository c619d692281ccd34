"""Read-side latency at production volume: the usage API and the dashboard over N records.

    python benchmarks/query_scale.py [--records 200000] [--database postgres|sqlite]
                                     [--keep DIR | --reuse DIR] [--repeat 10] [--json]

Fills a fresh database with N synthetic records over 30 days (50,000 sessions, 1,000 users,
20 models, an ``env`` property, endpoints, virtual keys, Decimal costs, unpriced and error
records; see ``synthetic.py``): by COPY from parallel processes on Postgres, by
``executemany`` in big transactions on SQLite; then ``sessions`` as the writer keeps it,
``VACUUM ANALYZE`` on Postgres (what autovacuum would do), and ``tallyproxy rollups rebuild``
when the checkout has it. Prints how long each step took and the rows/s of the fill.

Then starts ``tallyproxy serve`` on that database and times each call of the usage API the
dashboard and users make (after ``--warmup`` unmeasured calls, ``--repeat`` measured ones, a
call stopping early after ``--budget`` seconds), and the dashboard's first load as a whole
(its five calls at once, as the browser makes them). Summary calls come twice: ``since`` 30
days before the newest record to the millisecond, as a dashboard sends it, and rounded down
to the hour. Prints p50/p99 per call, or JSON with ``--json``.

``--keep DIR`` keeps the database in DIR (Postgres data directory or SQLite file, and what was
filled); ``--reuse DIR`` measures a kept one again without filling. Needs the dev environment
and, for Postgres, the server binaries the tests use. A benchmark, not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import httpx  # noqa: E402
from overhead import free_port  # noqa: E402
from scale_db import (  # noqa: E402
    ROOT,
    KeptPostgres,
    analyze,
    fill,
    query_value,
    rebuild_rollups,
    rollups_command_exists,
)
from synthetic import Shape, models_for, now  # noqa: E402

META = "query_scale.json"
TOP_MODEL = "gpt-4o-mini"
RETIRED_MODEL = models_for(Shape.models)[-1].name


@dataclass
class Timing:
    name: str
    path: str
    samples: list[float]
    rows: int

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def iso(moment: datetime, hour: bool = False) -> str:
    """``moment`` as the dashboard sends it (milliseconds, Z) or rounded down to the hour."""
    if hour:
        return moment.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def summary_calls(end: datetime) -> list[tuple[str, str]]:
    month = end - timedelta(days=30)
    calls = []
    for label, hour in (("", False), (", hour-aligned", True)):
        since = quote(iso(month, hour))
        calls += [
            (f"summary day 30d{label}", f"/usage/summary?group_by=day&since={since}"),
            (f"summary model 30d{label}", f"/usage/summary?group_by=model&since={since}"),
            (
                f"summary user env:prod 30d{label}",
                f"/usage/summary?group_by=user&property=env:prod&since={since}",
            ),
            (
                f"summary property:env 30d{label}",
                f"/usage/summary?group_by=property:env&since={since}",
            ),
        ]  # fmt: skip
    return calls


def other_calls(end: datetime, session_id: str) -> list[tuple[str, str]]:
    day = quote(iso(end - timedelta(days=1)))
    session = quote(session_id, safe="")
    retired = quote(RETIRED_MODEL, safe="")
    return [
        (f"requests model={TOP_MODEL} 1d", f"/usage/requests?model={TOP_MODEL}&since={day}"),
        # No request in the last day: the newest-first scan finds nothing to stop at.
        ("requests model=<retired> 1d", f"/usage/requests?model={retired}&since={day}"),
        ("sessions", "/usage/sessions"),
        ("session by id", f"/usage/sessions/{session}"),
        ("requests of the session", f"/usage/requests?session_id={session}&limit=1000"),
        ("newest 100 requests", "/usage/requests?limit=100"),
    ]


def dashboard_paths(end: datetime) -> list[str]:
    """What proxy/dashboard/static/app.js asks on first load (7 days, grain day, top 10)."""
    params = {"since": iso(end - timedelta(days=7))}
    summary = "/usage/summary?" + urlencode(params)
    return [
        summary + "&group_by=day",
        summary + "&group_by=model&limit=10",
        summary + "&group_by=user&limit=10",
        summary + "&group_by=session&limit=10",
        "/usage/sessions?" + urlencode({**params, "limit": 20}),
    ]


async def get_rows(client: httpx.AsyncClient, path: str) -> int:
    response = await client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
    body = response.json()
    return len(body["data"]) if "data" in body else 1


async def time_call(
    client: httpx.AsyncClient, name: str, paths: list[str], args: argparse.Namespace
) -> Timing:
    """One call (several paths: at once, timed as one), warmed up, then repeated."""
    for _ in range(args.warmup):
        await asyncio.gather(*(get_rows(client, path) for path in paths))
    samples: list[float] = []
    rows = 0
    budget_end = time.perf_counter() + args.budget
    while len(samples) < args.repeat and (len(samples) < 3 or time.perf_counter() < budget_end):
        started = time.perf_counter()
        counts = await asyncio.gather(*(get_rows(client, path) for path in paths))
        samples.append(time.perf_counter() - started)
        rows = sum(counts)
    return Timing(name, paths[0] if len(paths) == 1 else f"{len(paths)} calls", samples, rows)


async def measure(base_url: str, end: datetime, args: argparse.Namespace) -> list[Timing]:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        # The busiest of the recent sessions: the one a dashboard user would open.
        recent = (await client.get("/usage/sessions?limit=20")).json()["data"]
        busiest = max(recent, key=lambda s: s["requests"], default={"session_id": "none"})
        session_id = busiest["session_id"]
        calls = [(name, [path]) for name, path in summary_calls(end) + other_calls(end, session_id)]
        calls.append(("dashboard first load", dashboard_paths(end)))
        timings = []
        for name, paths in calls:
            timing = await time_call(client, name, paths, args)
            if not args.json:
                print_timing(timing)
            timings.append(timing)
        return timings


def print_timing(timing: Timing) -> None:
    print(
        f"  {timing.name:38} {timing.quantile(0.5):9.1f} {timing.quantile(0.99):9.1f} "
        f"{len(timing.samples):4} {timing.rows:6}",
        flush=True,
    )


# -- the database and the proxy ------------------------------------------------------------


def open_database(args: argparse.Namespace, directory: Path) -> tuple[str, KeptPostgres | None]:
    if args.database == "sqlite":
        return f"sqlite+aiosqlite:///{directory / 'tallyproxy.db'}", None
    server = KeptPostgres(directory / "postgres", {"shared_buffers": args.shared_buffers})
    server.start()
    exists = f"SELECT count(*) FROM pg_database WHERE datname = '{args.database_name}'"
    if not query_value(server.url(), exists):
        server.create_database(args.database_name)
    return server.url(args.database_name), server


def start_proxy(tmp: Path, url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = tmp / "tallyproxy.json"
    config.write_text(json.dumps({"database": {"spool_dir": str(tmp / "spool")}}))
    command = [
        sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port),
        "--database-url", url, "--log-level", "warning", "--upstream", "http://127.0.0.1:9/v1",
    ]  # fmt: skip
    proxy = subprocess.Popen(command, cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # a first start may migrate a big database
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise RuntimeError(f"tallyproxy serve exited with {proxy.returncode}")
        try:
            if httpx.get(base_url + "/readyz", timeout=5).status_code == 200:
                return proxy, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proxy.terminate()
    raise RuntimeError("tallyproxy serve did not become ready")


def database_size(url: str, server: KeptPostgres | None, name: str) -> int:
    if server is None:
        path = Path(url.split(":///", 1)[1])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return int(query_value(url, f"SELECT pg_database_size('{name}')"))


def prepare(args: argparse.Namespace, directory: Path, url: str) -> dict[str, Any]:
    """The database's description: filled now, or read from a kept directory."""
    meta_path = directory / META
    if args.reuse:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if args.rebuild and rollups_command_exists():
            started = time.perf_counter()
            rebuild_rollups(url)
            meta["fill_seconds"]["rollups rebuild"] = time.perf_counter() - started
        elif args.database == "postgres":
            analyze(url)  # a kept database rebuilt before rebuilds analyzed
        return meta
    shape = Shape(records=args.records, end=now())
    say = (lambda _: None) if args.json else (lambda text: print(text, flush=True))
    say(f"filling {args.records:,} records into {args.database} ({args.jobs} processes)")
    report = fill(url, shape, args.jobs, say)
    meta = {
        "database": args.database,
        "records": args.records,
        "end": shape.end.isoformat(),
        "fill_seconds": report.seconds,
        "fill_rows_per_second": report.rows_per_second,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    say(f"fill: {report.rows_per_second:,.0f} rows/s")
    return meta


def run(args: argparse.Namespace, directory: Path, tmp: Path) -> dict[str, Any]:
    url, server = open_database(args, directory)
    proxy = None
    try:
        meta = prepare(args, directory, url)
        meta["database_bytes"] = database_size(url, server, args.database_name)
        meta["load_average"] = os.getloadavg()
        end = datetime.fromisoformat(meta["end"]).astimezone(UTC)
        proxy, base_url = start_proxy(tmp, url)
        if not args.json:
            print(
                f"{meta['records']:,} records, {meta['database_bytes'] / 2**30:.1f} GiB on disk; "
                f"rollups: {'rebuilt' if 'rollups rebuild' in meta['fill_seconds'] else 'none'}; "
                f"load average {meta['load_average'][0]:.1f} on {os.cpu_count()} CPUs"
            )
            print(f"  {'call':38} {'p50 ms':>9} {'p99 ms':>9} {'n':>4} {'rows':>6}")
        timings = asyncio.run(measure(base_url, end, args))
        meta["calls"] = [
            {**asdict(t), "p50_ms": t.quantile(0.5), "p99_ms": t.quantile(0.99)} for t in timings
        ]
        return meta
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=60)
        if server is not None:
            server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--database-name", default="qscale", help=argparse.SUPPRESS)
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument("--keep", type=Path, metavar="DIR", help="fill into DIR and keep it")
    kept.add_argument("--reuse", type=Path, metavar="DIR", help="measure a kept DIR, no fill")
    parser.add_argument("--rebuild", action="store_true", help="with --reuse: rebuild rollups")
    parser.add_argument("--repeat", type=int, default=10, help="measured calls per call")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured calls first")
    parser.add_argument("--budget", type=float, default=60, help="seconds per call at most")
    parser.add_argument("--jobs", type=int, default=2, help="processes making the rows")
    parser.add_argument("--shared-buffers", default="64MB", help="Postgres shared_buffers")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tally-qscale-"))
    tmp.chmod(0o755)  # the postgres user reaches its data directory through it
    directory = args.reuse or args.keep or tmp / "db"
    if args.keep and any(args.keep.glob("*")):
        parser.error(f"{args.keep} is not empty: --reuse it, or delete it first")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, directory, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
