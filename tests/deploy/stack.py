"""The compose stack end to end: build it, send requests through nginx, break things, count.

    python -m tests.deploy.stack     (from the checkout, dev venv; or deploy/stack-test.sh)

It builds the stand-in base images (deploy/standins/build.sh, unless ``--no-standins``: then
the compose file's registry images, or the ``TALLYPROXY_*_IMAGE`` variables), the proxy image
and the stack, with the fake OpenAI provider of tests/support as the upstream, serving on the
host. Then, with the openai SDK through the balancer:

1. requests with both replicas up;
2. requests while Postgres is stopped for a while and started again (records wait in the
   replicas' spools);
3. proxy-2 stopped, its address taken by a placeholder container, proxy-2 started again on
   another address: requests with both up must reach it again without restarting nginx.

Every answered request must have exactly one record in Postgres (by ``x-tally-request-id``).
The summary is printed as JSON; the exit code is 0 when everything held.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_asgi_server

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "tallyproxy-stacktest"
STANDINS = {
    "TALLYPROXY_PYTHON_IMAGE": "tallyproxy-standin/python:3.11-bookworm",
    "TALLYPROXY_POSTGRES_IMAGE": "tallyproxy-standin/postgres:15-bookworm",
    "TALLYPROXY_NGINX_IMAGE": "tallyproxy-standin/nginx:1.22-bookworm",
}
ID_HEADER = "x-tally-request-id"


def compose_command() -> list[str]:
    """``docker compose`` (v2) when the CLI has it, else Debian's ``docker-compose`` 1.29."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit("neither `docker compose` nor `docker-compose` is installed")


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    return done.returncode == 0


class ClientAddresses:
    """ASGI wrapper around the fake upstream that counts requests per client address."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("client"):
            with self._lock:
                self.counts[scope["client"][0]] += 1
        await self.app(scope, receive, send)

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.counts)


@dataclass
class Tally:
    answered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record_id: str | None, error: str | None) -> None:
        with self.lock:
            if record_id is not None:
                self.answered.append(record_id)
            else:
                self.failed.append(error or "no request id")


class Stack:
    def __init__(self, env: dict[str, str], log: list[str]) -> None:
        self.env = env
        self.compose = [*compose_command(), "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml")]
        self.log = log

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> str:
        done = subprocess.run(
            [*self.compose, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).strip()

    def address(self, service: str) -> str:
        return docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            self.container(service),
        ).strip()  # fmt: skip

    def wait_healthy(self, service: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = docker("inspect", "-f", "{{.State.Health.Status}}", self.container(service))
            if state.strip() == "healthy":
                return
            time.sleep(1)
        raise TimeoutError(f"{service} not healthy after {timeout:.0f} s")

    def records(self) -> list[str]:
        out = self.run(
            "exec", "-T", "postgres", "psql", "-U", "tally", "-d", "tallyproxy", "-At",
            "-c", "select id from requests",
            check=False,
        )  # fmt: skip
        return out.split()


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def host_address() -> str:
    """The host as containers reach it: the default bridge's gateway."""
    gateway = docker("network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}")
    return gateway.strip() or "172.17.0.1"


def send(client: openai.OpenAI, number: int, tally: Tally) -> None:
    """One chat completion through the balancer, streamed every other time."""
    messages: Any = [{"role": "user", "content": f"request {number}"}]
    try:
        if number % 2:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
            for _chunk in raw.parse():
                pass
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages
            )
            raw.parse()
        tally.add(raw.headers.get(ID_HEADER), None)
    except openai.OpenAIError as error:
        tally.add(None, f"{type(error).__name__}: {error}")


def wait_until(check: Any, timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


@contextlib.contextmanager
def upstream() -> Iterator[tuple[FakeUpstream, ClientAddresses, int]]:
    fake = FakeUpstream(delay_ms=20)
    counting = ClientAddresses(fake.app)
    with run_asgi_server(counting, host="0.0.0.0", lifespan="off") as url:
        yield fake, counting, int(url.rsplit(":", 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-standins", action="store_true", help="use the registry's images")
    parser.add_argument("--requests", type=int, default=30, help="per phase (default 30)")
    parser.add_argument("--outage", type=float, default=20.0, help="Postgres stopped, seconds")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    if not docker_answers():
        print("stack: no Docker daemon answers `docker info`", file=sys.stderr)
        return 2

    started = time.monotonic()
    summary: dict[str, Any] = {}
    log: list[str] = []
    timings: dict[str, float] = {}

    def phase(name: str) -> Any:
        class Timer:
            def __enter__(self) -> None:
                self.start = time.monotonic()
                print(f"stack: {name}", file=sys.stderr, flush=True)

            def __exit__(self, *exc: object) -> None:
                timings[name] = round(time.monotonic() - self.start, 1)

        return Timer()

    env = dict(os.environ)
    if not args.no_standins:
        with phase("standins"):
            subprocess.run(["bash", str(ROOT / "deploy/standins/build.sh")], check=True)
        for key, image in STANDINS.items():
            env.setdefault(key, image)
    lb_port = free_port()
    token = secrets.token_hex(16)
    with upstream() as (fake, addresses, upstream_port):
        env |= {
            "TALLYPROXY_ADMIN_TOKEN": token,
            "TALLYPROXY_UPSTREAM_URL": f"http://{host_address()}:{upstream_port}/v1",
            "TALLYPROXY_UPSTREAM_API_KEY": "sk-stack-test-provider",
            "TALLYPROXY_PUBLISHED_PORT": str(lb_port),
            "POSTGRES_PASSWORD": secrets.token_hex(8),
        }
        stack = Stack(env, log)
        stack.run("down", "-v", "--remove-orphans", check=False)
        placeholder = f"{PROJECT}-placeholder"
        subprocess.run(["docker", "rm", "-f", placeholder], capture_output=True, check=False)
        try:
            with phase("build"):
                stack.run("build")
            with phase("up"):
                stack.run("up", "-d")
                stack.wait_healthy("lb")
            lb = f"http://127.0.0.1:{lb_port}"
            ok = wait_until(lambda: _get(f"{lb}/healthz") == 200, 60)
            summary["lb_healthz"] = ok
            client = openai.OpenAI(
                base_url=f"{lb}/v1", api_key=virtual_key(lb, token), max_retries=0, timeout=60
            )
            tally = Tally()
            numbers = iter(range(1_000_000))

            with phase("steady"):
                for _ in range(args.requests):
                    send(client, next(numbers), tally)
            summary["steady"] = {"answered": len(tally.answered), "failed": len(tally.failed)}

            with phase("postgres outage"):
                stop = threading.Event()

                def keep_sending() -> None:
                    while not stop.is_set():
                        send(client, next(numbers), tally)
                        time.sleep(0.2)

                before = len(tally.answered)
                sender = threading.Thread(target=keep_sending)
                sender.start()
                time.sleep(2)
                stack.run("stop", "postgres")
                time.sleep(args.outage)
                stack.run("start", "postgres")
                stack.wait_healthy("postgres")
                time.sleep(3)
                stop.set()
                sender.join()
            summary["during_outage"] = {"answered": len(tally.answered) - before}

            with phase("replica restart"):
                old = stack.address("proxy-2")
                stack.run("stop", "proxy-2")
                docker(
                    "run", "-d", "--rm", "--name", placeholder,
                    "--network", f"{PROJECT}_default", "--entrypoint", "sleep",
                    env.get("TALLYPROXY_PYTHON_IMAGE", "python:3.11-slim-bookworm"), "600",
                )  # fmt: skip
                stack.run("start", "proxy-2")
                stack.wait_healthy("proxy-2")
                new = stack.address("proxy-2")
                time.sleep(6)  # nginx's resolver: valid=5s
                seen = addresses.snapshot()
                before = len(tally.answered)
                for _ in range(20):
                    send(client, next(numbers), tally)
                after = addresses.snapshot() - seen
            summary["replica_restart"] = {
                "proxy-2 address before": old,
                "proxy-2 address after": new,
                "moved": old != new,
                "answered": len(tally.answered) - before,
                "upstream requests by replica": {
                    "proxy-1": after.get(stack.address("proxy-1"), 0),
                    "proxy-2": after.get(new, 0),
                },
            }

            with phase("records"):
                answered = collections.Counter(tally.answered)

                def all_recorded() -> bool:
                    return set(answered) <= set(stack.records())

                wait_until(all_recorded, 120, step=2)
                records = collections.Counter(stack.records())
            missing = [i for i in answered if i not in records]
            duplicates = {i: n for i, n in records.items() if n > 1}
            summary["records"] = {
                "answered": sum(answered.values()),
                "failed": len(tally.failed),
                "records": sum(records.values()),
                "answered without a record": len(missing),
                "ids recorded twice": len(duplicates),
                "ids answered twice": sum(1 for n in answered.values() if n > 1),
                "upstream requests": len(fake.requests),
            }
            summary["failures"] = tally.failed[:5]
        finally:
            subprocess.run(["docker", "rm", "-f", placeholder], capture_output=True, check=False)
            if not args.keep:
                stack.run("down", "-v", "--remove-orphans", check=False)
    timings["total"] = round(time.monotonic() - started, 1)
    summary["seconds"] = timings
    print(json.dumps(summary, indent=2))
    restart = summary["replica_restart"]
    counts = summary["records"]
    held = (
        summary["lb_healthz"]
        and not tally.failed
        and summary["during_outage"]["answered"] > 0
        and restart["moved"]
        and restart["answered"] == 20
        and restart["upstream requests by replica"]["proxy-2"] > 0
        and counts["answered without a record"] == 0
        and counts["ids recorded twice"] == 0
        and counts["ids answered twice"] == 0
        and counts["records"] == counts["answered"]
    )
    return 0 if held else 1


def virtual_key(lb: str, token: str) -> str:
    """A tallyproxy key from the admin API: with a provider key set, the stack wants one."""
    request = urllib.request.Request(
        f"{lb}/admin/keys",
        data=json.dumps({"name": "stack-test", "user": "stack"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        key: str = json.load(response)["key"]
        return key


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except OSError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
