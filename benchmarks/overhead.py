"""Proxy overhead against a direct call to the same canned upstream, in one run.

    python benchmarks/overhead.py [--duration 10] [--concurrency 1 64] [--workers 1]
                                  [--database-url URL] [--session-id ID] [--only json]
                                  [--profile DIR] [--soak 1000000]

Starts a fake upstream that costs almost nothing (nginx with canned answers; the raw-asyncio
``canned_upstream.py`` when nginx is missing), a throwaway PostgreSQL (unless
``--database-url`` names a database), ``tallyproxy serve`` with metering on, and drives the
upstream directly and then through the proxy with wrk (a raw-socket Python load generator
when wrk is missing). Prints for each case requests/s, p50/p99 latency, CPU time per request
of the server under test (after ``--warmup`` seconds of unmeasured load), their ratios to
the direct call of the same run, and at the end
the proxy's peak memory, how long the last records took to become queryable and how many
were lost. Streams are 25 content chunks plus the usage chunk the proxy asks for.

Needs nothing but the dev environment, ``wrk`` and ``nginx`` (``apt-get install wrk
nginx-light``), and the PostgreSQL the tests use. A benchmark, not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from canned_upstream import CHAT_JSON, STREAM_USAGE  # noqa: E402
from spy import print_profile, record  # noqa: E402

JSON_MODEL, STREAM_MODEL = "bench-json", "bench-stream"


def chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float = 0.0
    export_cpu_seconds: float = 0.0
    """Of ``cpu_seconds``, what the OTLP export process spent (``--otlp``)."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds / max(1, self.requests) * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


# -- the fake upstream ----------------------------------------------------------------------


def start_nginx(tmp: Path, json_port: int, stream_port: int) -> subprocess.Popen[bytes]:
    """One nginx worker answering every request with the canned JSON or the canned stream."""
    servers = ""
    for port, kind, body in (
        (json_port, "application/json", CHAT_JSON),
        (stream_port, "text/event-stream", STREAM_USAGE),
    ):
        root = tmp / f"answer-{port}"
        root.mkdir()
        (root / "answer").write_bytes(body)
        # Static files refuse POST with a 405; error_page turns that into the file, by GET.
        servers += f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 10000000;
        etag off;
        root {root};
        location / {{
            default_type {kind};
            try_files /answer =404;
            error_page 405 =200 /answer;
        }}
    }}"""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    {servers}
}}
"""
    )
    return subprocess.Popen([shutil.which("nginx") or "nginx", "-c", str(conf)])


def start_upstream(tmp: Path, nginx: bool) -> tuple[subprocess.Popen[bytes], int, int]:
    """The fake upstream and its JSON and stream ports (one port when it tells them apart)."""
    if nginx:
        json_port, stream_port = free_port(), free_port()
        process = start_nginx(tmp, json_port, stream_port)
        wait_port(json_port)
        wait_port(stream_port)
        return process, json_port, stream_port
    port = free_port()
    process = subprocess.Popen([sys.executable, str(HERE / "canned_upstream.py"), str(port)])
    wait_port(port)
    return process, port, port


# -- the proxy -------------------------------------------------------------------------------


def write_config(tmp: Path, json_port: int, stream_port: int, drift_sample_rate: float) -> Path:
    """Two routes by model, so that one nginx location per answer kind is enough."""
    config = tmp / "tallyproxy.yaml"
    routes = [
        {"name": "json", "kind": "openai", "url": f"http://127.0.0.1:{json_port}/v1",
         "models": [JSON_MODEL]},
        {"name": "stream", "kind": "openai", "url": f"http://127.0.0.1:{stream_port}/v1",
         "models": [STREAM_MODEL]},
    ]  # fmt: skip
    prices = [{"model": "gpt-4o-mini*", "input": "0.15", "output": "0.6"}]
    spool = str(tmp / "spool")
    metering = {"drift_sample_rate": drift_sample_rate}
    config.write_text(
        json.dumps(
            {"upstreams": routes, "prices": prices, "database": {"spool_dir": spool},
             "metering": metering}
        )
    )  # fmt: skip
    return config


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def export_processes(pid: int) -> list[int]:
    """The proxy's OTLP export process (started with multiprocessing's spawn), if any."""
    found = []
    for member in process_tree(pid):
        try:
            if b"multiprocessing.spawn" in Path(f"/proc/{member}/cmdline").read_bytes():
                found.append(member)
        except OSError:
            continue
    return found


def cpu_seconds(pid: int, members: list[int] | None = None) -> float:
    total = 0
    for member in process_tree(pid) if members is None else members:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_mb(pid: int, key: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) summed over the process and its workers."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total / 1024


def stored_requests(proxy_port: int) -> int:
    url = f"http://127.0.0.1:{proxy_port}/usage/summary?group_by=endpoint"
    with urllib.request.urlopen(url, timeout=10) as response:
        data = json.load(response)["data"]
    return sum(int(row["requests"]) for row in data)


def record_lag(proxy_port: int, expected: int, timeout: float = 60) -> tuple[float, int]:
    started = time.perf_counter()
    stored = 0
    while time.perf_counter() - started < timeout:
        stored = stored_requests(proxy_port)
        if stored >= expected:
            break
        time.sleep(0.01)
    return time.perf_counter() - started, stored


# -- load generators ---------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local session = os.getenv("BENCH_SESSION")
if session ~= nil and session ~= "" then wrk.headers["X-Session-Id"] = session end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def run_wrk(
    tmp: Path, port: int, body: bytes, seconds: float, connections: int, session: str
) -> Result:
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": body.decode(), "BENCH_SESSION": session}
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(script), f"http://127.0.0.1:{port}/v1/chat/completions",
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH "))
    requests, duration_us, p50, p99, errors = (int(part) for part in line.split()[1:])
    return Result(requests, duration_us / 1e6, p50 / 1000, p99 / 1000, errors)


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    start = lower.index(b"content-length:") + 15
    length = int(lower[start : lower.index(b"\r\n", start)])
    await reader.readexactly(length)
    return status


async def _python_load(
    port: int, body: bytes, seconds: float, connections: int, session: str
) -> Result:
    lines = [
        "POST /v1/chat/completions HTTP/1.1", f"host: 127.0.0.1:{port}",
        "content-type: application/json", "authorization: Bearer sk-bench",
        f"content-length: {len(body)}", *([f"x-session-id: {session}"] if session else []),
    ]  # fmt: skip
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                if await _read_response(reader) != 200:
                    errors += 1
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return Result(len(latencies), elapsed, pick(0.5), pick(0.99), errors)


def run_load(
    tmp: Path, use_wrk: bool, port: int, body: bytes, seconds: float, connections: int,
    session: str, measured_pid: int | None,
) -> Result:  # fmt: skip
    cpu_before = cpu_seconds(measured_pid) if measured_pid else 0.0
    exporters = export_processes(measured_pid) if measured_pid else []
    export_before = cpu_seconds(0, exporters) if exporters else 0.0
    if use_wrk:
        result = run_wrk(tmp, port, body, seconds, connections, session)
    else:
        result = asyncio.run(_python_load(port, body, seconds, connections, session))
    if measured_pid:
        result.cpu_seconds = cpu_seconds(measured_pid) - cpu_before
    if exporters:
        result.export_cpu_seconds = cpu_seconds(0, exporters) - export_before
    return result


# -- the run -------------------------------------------------------------------------------


def start_database(url: str | None) -> tuple[str, object | None]:
    if url:
        return url, None
    from tests.support.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    return server.url(server.create_database()), server


def soak(tmp: Path, use_wrk: bool, port: int, pid: int, args: argparse.Namespace) -> int:
    """Drive the proxy until ``args.soak`` requests were answered at the highest
    concurrency; print its memory after each slice, so growth shows. Returns the answered."""
    stream = args.only == "stream"
    body = chat_body(STREAM_MODEL if stream else JSON_MODEL, stream)
    connections = max(args.concurrency)
    answered, started = 0, time.perf_counter()
    print(f"soak: {args.soak} {'stream' if stream else 'json'} requests at c={connections}")
    while answered < args.soak:
        result = run_load(tmp, use_wrk, port, body, 30, connections, args.session_id, pid)
        answered += result.requests
        print(
            f"  after {answered:>9} requests ({time.perf_counter() - started:5.0f} s, "
            f"{result.rps:5.0f} req/s): RSS {memory_mb(pid, 'VmRSS'):.0f} MB, "
            f"peak {memory_mb(pid, 'VmHWM'):.0f} MB"
        )
    return answered


class OtlpSink:
    """A collector stand-in that takes every OTLP/HTTP export and only counts it (decoding
    would spend the CPU the proxy is measured on)."""

    def __init__(self) -> None:
        import http.server
        import threading

        sink = self
        self.exports = 0
        self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                sink.exports += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--workers", type=int, default=1, help="proxy worker processes")
    parser.add_argument("--database-url", help="default: a throwaway local PostgreSQL")
    parser.add_argument("--session-id", default="", help="send X-Session-Id on every request")
    parser.add_argument("--python-upstream", action="store_true", help="not nginx")
    parser.add_argument("--python-load", action="store_true", help="not wrk")
    parser.add_argument("--only", choices=["json", "stream"], help="one kind of answer")
    parser.add_argument(
        "--drift-sample-rate", type=float, default=0.0,
        help="share of requests also counted locally (0: no tokenizer is ever loaded)",
    )  # fmt: skip
    parser.add_argument(
        "--soak", type=int, default=0, metavar="N",
        help="then N more requests, printing the proxy's memory every 30 s",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of unmeasured load on the proxy first"
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="the proxy logs at info, so a line per request, into a file (default: warning)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", type=Path, help="sample the proxy with py-spy into DIR"
    )
    parser.add_argument(
        "--otlp", action="store_true",
        help="the proxy exports spans and metrics to a local OTLP/HTTP sink (OTEL_* variables)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    use_nginx = not args.python_upstream and shutil.which("nginx") is not None
    use_wrk = not args.python_load and shutil.which("wrk") is not None

    tmp = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    tmp.chmod(0o755)  # nginx's worker, as nobody, reads the canned answers in it
    database_url, database = start_database(args.database_url)
    upstream, json_port, stream_port = start_upstream(tmp, use_nginx)
    proxy_port = free_port()
    config = write_config(tmp, json_port, stream_port, args.drift_sample_rate)
    proxy_cmd = [
        sys.executable, "-m", "proxy", "serve", "--config", str(config),
        "--port", str(proxy_port), "--database-url", database_url,
        "--log-level", "info" if args.access_log else "warning",
    ]  # fmt: skip
    if args.workers > 1:
        proxy_cmd += ["--workers", str(args.workers)]
    proxy_log = (tmp / "proxy.log").open("wb") if args.access_log else None
    sink = OtlpSink() if args.otlp else None
    proxy_env = {**os.environ}
    if sink is not None:
        proxy_env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SERVICE_NAME": "bench"}
    proxy = subprocess.Popen(proxy_cmd, cwd=tmp, stderr=proxy_log, env=proxy_env)
    print(
        f"upstream: {'nginx' if use_nginx else 'python canned_upstream'}; load: "
        f"{'wrk' if use_wrk else 'python'}; proxy workers: {args.workers}; database: "
        f"{database_url.split('@')[-1]}; {os.cpu_count()} CPUs"
    )
    try:
        wait_port(proxy_port)
        time.sleep(0.5 * args.workers)
        before = stored_requests(proxy_port)
        answered = 0
        print(
            f"{'case':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10}  "
            f"{'ratio rps':>9} {'+p50 ms':>8} {'+p99 ms':>8}"
        )
        kinds = [(False, JSON_MODEL, json_port), (True, STREAM_MODEL, stream_port)]
        if args.warmup > 0:
            # First requests load what later ones reuse (price entries, the tokenizer of
            # the drift samples, pooled connections): steady state is what is measured.
            for stream, model, _ in kinds:
                warmup = (chat_body(model, stream), args.warmup, 8, args.session_id)
                answered += run_load(tmp, use_wrk, proxy_port, *warmup, None).requests
        for stream, model, upstream_port in kinds:
            kind = "stream" if stream else "json"
            if args.only and args.only != kind:
                continue
            body = chat_body(model, stream)
            for connections in args.concurrency:
                load = (body, args.duration, connections, args.session_id)
                direct = run_load(tmp, use_wrk, upstream_port, *load, upstream.pid)
                samples = args.profile / f"{kind}-c{connections}.txt" if args.profile else tmp
                spy = record(proxy.pid, samples, args.duration) if args.profile else None
                proxied = run_load(tmp, use_wrk, proxy_port, *load, proxy.pid)
                answered += proxied.requests
                for label, result in (("direct", direct), ("proxy", proxied)):
                    extra = ""
                    if result is proxied:
                        extra = (
                            f"  {result.rps / direct.rps:9.3f} {result.p50_ms - direct.p50_ms:8.2f}"
                            f" {result.p99_ms - direct.p99_ms:8.2f}"
                        )
                    errors = f"  ({result.errors} errors)" if result.errors else ""
                    print(
                        f"{f'{kind} c={connections} {label}':22} {result.rps:8.0f} "
                        f"{result.p50_ms:8.2f} {result.p99_ms:8.2f} {result.cpu_ms:10.3f}"
                        f"{extra}{errors}"
                    )
                if proxied.export_cpu_seconds:
                    share = proxied.export_cpu_seconds / max(1, proxied.requests) * 1000
                    print(
                        f"{'':22} of the CPU: OTLP export process {share:.3f} ms/req, "
                        f"proxy {proxied.cpu_ms - share:.3f} ms/req"
                    )
                if spy is not None:
                    spy.wait()
                    print_profile(samples, f"{kind} c={connections}")
        if args.soak:
            answered += soak(tmp, use_wrk, proxy_port, proxy.pid, args)
        lag, stored = record_lag(proxy_port, before + answered)
        stored -= before
        print(
            f"records: answered {answered}, stored {stored}, lost {max(0, answered - stored)}"
            + (f" (+{stored - answered} for requests cut by the load generator at the end)"
               if stored > answered else "")
        )  # fmt: skip
        print(f"record lag after the last response: {lag * 1000:.0f} ms")
        print(
            f"proxy memory: RSS {memory_mb(proxy.pid, 'VmRSS'):.0f} MB, "
            f"peak {memory_mb(proxy.pid, 'VmHWM'):.0f} MB (all workers)"
            + "".join(
                f"; of which the OTLP export process {_rss_mb(member):.0f} MB"
                for member in export_processes(proxy.pid)
            )
        )
        if sink is not None:
            time.sleep(2)  # the export's last batches
            print(f"OTLP sink: {sink.exports} exports, {sink.bytes / 1e6:.1f} MB received")
    finally:
        for process in (proxy, upstream):
            process.terminate()
            process.wait(timeout=60)
        if database is not None:
            database.close()  # type: ignore[attr-defined]
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
