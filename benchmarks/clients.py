"""Upstream HTTP clients compared: a bare pass-through under uvicorn, with httpx or aiohttp.

    python benchmarks/clients.py [--duration 10] [--concurrency 64]

The same minimal ASGI app (read the body, POST it upstream through one pooled client, answer
with the upstream's body) runs once per client against the nginx upstream of
``overhead.py`` and is driven by wrk; it prints requests/s, p50/p99 and CPU per request. No
metering, no database: only what the client's pool costs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import overhead  # noqa: E402

CLIENTS = ("httpx", "aiohttp")


def make_app(kind: str, upstream: str) -> Any:
    """A pass-through ASGI app whose client is made on the first request (inside the loop)."""
    state: dict[str, Any] = {}

    async def body_of(receive: Any) -> bytes:
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(parts)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await body_of(receive)
        url = upstream + scope["path"]
        headers = [(b"content-type", b"application/json")]
        if kind == "httpx":
            import httpx

            if "client" not in state:
                limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
                state["client"] = httpx.AsyncClient(limits=limits)
            response = await state["client"].post(url, content=body)
            status, content = response.status_code, response.content
        else:
            import aiohttp

            if "client" not in state:
                connector = aiohttp.TCPConnector(limit=256)
                state["client"] = aiohttp.ClientSession(connector=connector)
            async with state["client"].post(url, data=body) as response:
                status, content = response.status, await response.read()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    return app


def serve(kind: str, port: int, upstream: str) -> None:
    import uvicorn

    uvicorn.run(
        make_app(kind, upstream),
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="off",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", nargs=3, metavar=("CLIENT", "PORT", "UPSTREAM"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return 0
    if shutil.which("nginx") is None or shutil.which("wrk") is None:
        print("needs nginx and wrk: apt-get install nginx-light wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tally-clients-"))
    tmp.chmod(0o755)
    upstream, json_port, _ = overhead.start_upstream(tmp, nginx=True)
    body = overhead.chat_body(overhead.JSON_MODEL, stream=False)
    try:
        direct = overhead.run_load(
            tmp, True, json_port, body, args.duration, args.concurrency, "", upstream.pid
        )
        print(f"{'client':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10}")
        print(f"{'direct':8} {direct.rps:8.0f} {direct.p50_ms:8.2f} {direct.p99_ms:8.2f}")
        for kind in CLIENTS:
            port = overhead.free_port()
            upstream_url = f"http://127.0.0.1:{json_port}"
            command = [sys.executable, __file__, "--serve", kind, str(port), upstream_url]
            server = subprocess.Popen(command)
            try:
                overhead.wait_port(port)
                result = overhead.run_load(
                    tmp, True, port, body, args.duration, args.concurrency, "", server.pid
                )
            finally:
                server.terminate()
                server.wait(timeout=30)
            errors = f"  ({result.errors} errors)" if result.errors else ""
            print(
                f"{kind:8} {result.rps:8.0f} {result.p50_ms:8.2f} {result.p99_ms:8.2f} "
                f"{result.cpu_ms:10.3f}{errors}"
            )
    finally:
        upstream.terminate()
        upstream.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
