"""Proxy overhead against a direct call to the same canned upstream, in one run.

    python benchmarks/overhead.py [--requests 3000] [--concurrency 1 64] [--database-url URL]

Starts the canned upstream and ``tallyproxy serve`` as subprocesses, drives both with a
keep-alive HTTP/1.1 load generator over raw sockets (light enough not to be the bottleneck),
and prints requests/s, p50/p99 latency, proxy CPU time per request, proxy memory, and how
long the records took to become queryable and whether any was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHAT = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
).encode()
CHAT_STREAM = json.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
).encode()


@dataclass
class Result:
    label: str
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


async def _worker(port: int, request: bytes, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"status {status}")
    finally:
        writer.close()


def build_request(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "content-type: application/json",
        "authorization: Bearer sk-bench",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_load(label: str, port: int, body: bytes, total: int, concurrency: int) -> Result:
    request = build_request(port, body, {"x-session-id": "bench"})
    latencies: list[float] = []
    per_worker = max(1, total // concurrency)
    started = time.perf_counter()
    await asyncio.gather(
        *(_worker(port, request, per_worker, latencies) for _ in range(concurrency))
    )
    return Result(label, per_worker * concurrency, time.perf_counter() - started, latencies)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


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
        time.sleep(0.02)
    return time.perf_counter() - started, stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="tally-bench-")
    database_url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
    upstream_port, proxy_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "canned_upstream.py"), str(upstream_port)]
    )
    proxy_cmd = [
        sys.executable, "-m", "proxy", "serve", "--port", str(proxy_port),
        "--upstream", f"http://127.0.0.1:{upstream_port}/v1",
        "--database-url", database_url, "--log-level", "warning",
    ]  # fmt: skip
    proxy = subprocess.Popen(proxy_cmd)
    try:
        wait_http(f"http://127.0.0.1:{proxy_port}/healthz")
        before = stored_requests(proxy_port)
        sent = 0
        print(f"{'case':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio rps':>9}")
        for stream, body in ((False, CHAT), (True, CHAT_STREAM)):
            for concurrency in args.concurrency:
                total = args.requests if concurrency > 1 else min(args.requests, 1000)
                kind = "stream" if stream else "json"
                direct = asyncio.run(run_load("direct", upstream_port, body, total, concurrency))
                cpu_before = cpu_seconds(proxy.pid)
                proxied = asyncio.run(run_load("proxy", proxy_port, body, total, concurrency))
                cpu_per_request = (cpu_seconds(proxy.pid) - cpu_before) / proxied.requests
                sent += proxied.requests
                for result in (direct, proxied):
                    ratio = result.rps / direct.rps
                    print(
                        f"{kind + ' c=' + str(concurrency) + ' ' + result.label:34} "
                        f"{result.rps:8.0f} {result.percentile(0.5):8.2f} "
                        f"{result.percentile(0.99):8.2f} {ratio:9.2f}"
                    )
                added_p50 = proxied.percentile(0.5) - direct.percentile(0.5)
                added_p99 = proxied.percentile(0.99) - direct.percentile(0.99)
                print(
                    f"  added latency p50 {added_p50:.2f} ms, p99 {added_p99:.2f} ms; "
                    f"proxy CPU {cpu_per_request * 1000:.2f} ms/request"
                )
        lag, stored = record_lag(proxy_port, before + sent)
        print(f"records: sent {sent}, stored {stored - before}, lost {before + sent - stored}")
        print(f"record lag after the last response: {lag * 1000:.0f} ms")
        print(
            f"proxy memory: RSS {memory_mb(proxy.pid, 'VmRSS'):.0f} MB, "
            f"peak {memory_mb(proxy.pid, 'VmHWM'):.0f} MB"
        )
    finally:
        for process in (proxy, upstream):
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
