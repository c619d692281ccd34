"""Every ``curl`` example of README.md, run with the real ``curl`` against ``tallyproxy serve``.

The examples are read from the README's ``sh`` code blocks as they stand, run in the
README's order against a proxy in front of the fake provider, with only the address and the
example ids changed: ``127.0.0.1:8080`` and ``localhost:8080`` become the test's port, and
the ids the README makes up (a record, a key) become those of a record and a key made
earlier in the same run. The README's Python example runs first (it makes the session
``chat-42`` the curl examples read). Each example must answer a 2xx.

Examples that carry ``$TALLYPROXY_ADMIN_TOKEN`` run twice: on the proxy started as the
README's first command starts it (``local`` mode, no token), and on one with an admin token.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, run_process_server

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
README_ADDRESSES = ("http://127.0.0.1:8080", "127.0.0.1:8080", "localhost:8080")
TOKEN_VARIABLE = "$TALLYPROXY_ADMIN_TOKEN"
ADMIN_TOKEN = "readme-admin-token"
# Ids the README makes up, and what they stand for.
EXAMPLE_RECORD_ID = "01a205c7877b72cf2a040494f86d1533"
EXAMPLE_KEY_ID = "3f9c0a1be2d47c55"


def code_blocks(markdown: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(markdown) if lang == language]


@dataclass(frozen=True)
class Example:
    command: str
    sketch: str = ""  # the "# -> {...}" comment after it: the answer's shape

    def sketched_keys(self) -> list[str]:
        """The top-level keys of the sketched answer."""
        depth, keys = 0, []
        for token in re.finditer(r'"(\w+)"\s*:|[\[{]|[\]}]', self.sketch):
            if token[0] in "[{":
                depth += 1
            elif token[0] in "]}":
                depth -= 1
            elif depth == 1:
                keys.append(token[1])
        return keys


def shell_examples(block: str) -> list[Example]:
    """The block's curl commands (continuation lines joined), each with its sketch."""
    examples: list[Example] = []
    sketching = False
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = line.strip()
        if line.startswith("curl "):
            examples.append(Example(line))
        elif examples and (line.startswith("# ->") or (sketching and line.startswith("#  "))):
            last = examples[-1]
            examples[-1] = Example(last.command, f"{last.sketch} {line.lstrip('#-> ')}")
            sketching = True
            continue
        sketching = False
    return examples


def curl_examples(markdown: str) -> list[Example]:
    """Every curl command of the README's ``sh`` blocks, in order, as written; a ``json``
    block that follows is the sketch of the last command before it."""
    examples: list[Example] = []
    for language, body in FENCE.findall(markdown):
        if language == "sh":
            examples += shell_examples(body)
        elif language == "json" and examples and not examples[-1].sketch:
            examples[-1] = Example(examples[-1].command, body)
    return examples


def test_the_readme_has_curl_examples_of_each_api() -> None:
    examples = curl_examples(README.read_text())
    # A change of the README's markup must not make the test below pass by finding nothing.
    for path in ("/usage/requests", "/usage/summary", "/admin/keys", "/admin/budgets", "/readyz"):
        assert any(path in example.command for example in examples), path
    sketched = {key for example in examples for key in example.sketched_keys()}
    assert {"unpriced_requests", "next_cursor", "group_by", "priced_as", "sample_rate"} <= sketched


@dataclass
class Proxy:
    url: str
    token: str | None
    ids: dict[str, str] = field(default_factory=dict)  # README's example id -> real id

    def argv(self, example: str) -> list[str]:
        """The example as curl's arguments, aimed at this proxy."""
        for address in README_ADDRESSES:
            example = example.replace(address, self.url)
        example = example.replace(TOKEN_VARIABLE, self.token or "")
        for made_up, real in self.ids.items():
            example = example.replace(made_up, real)
        argv = shlex.split(example, comments=True)
        assert argv[0] == "curl"
        return argv[1:]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def run_curl(curl: str, args: list[str], out: Path) -> Answer:
    done = subprocess.run(
        [curl, *args, "--max-time", "30", "-o", str(out), "-w", "%{http_code}"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, (args, done.stderr)
    return Answer(int(done.stdout), out.read_bytes())


@pytest.fixture(scope="module")
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.skip("needs the curl command")
    return found


@contextlib.contextmanager
def serve(upstream: FakeUpstream, folder: Path, token: str | None) -> Iterator[str]:
    """``tallyproxy serve`` as the README's first command runs it (plus ``token``); its URL."""
    port = free_port()
    cwd = folder / str(port)
    cwd.mkdir()
    env = {"TALLYPROXY_UPSTREAM_URL": upstream.base_url, "TALLYPROXY_ADMIN_TOKEN": token or ""}
    if token is None:
        # No admin token at all: whatever the environment running the tests holds.
        del env["TALLYPROXY_ADMIN_TOKEN"]
    argv = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
    with run_process_server(argv, port, env, cwd=cwd):
        yield f"http://127.0.0.1:{port}"


def run_python_example(proxy: Proxy) -> str:
    """The README's Python example against the proxy; the id of the record it made."""
    [example] = code_blocks(README.read_text(), "python")
    example = example.replace("http://127.0.0.1:8080", proxy.url)
    env = {**os.environ, "OPENAI_API_KEY": "sk-readme-example"}
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    record_id = done.stdout.decode().splitlines()[1].split()[0]
    deadline = time.monotonic() + 10
    while httpx.get(f"{proxy.url}/usage/requests/{record_id}").status_code != 200:
        assert time.monotonic() < deadline, "the example's record was not stored"
        time.sleep(0.05)
    return record_id


def run_examples(curl: str, proxy: Proxy, examples: list[Example], out: Path) -> list[str]:
    """Run each example; the ones that did not answer a 2xx, or not the sketched shape."""
    failed = []
    for example in examples:
        answer = run_curl(curl, proxy.argv(example.command), out)
        got = f"{example.command}\n  -> {answer.status} {answer.body[:300]!r}"
        if not 200 <= answer.status < 300:
            failed.append(got)
            continue
        made = answer.json() if answer.body.startswith(b"{") else {}
        missing = [key for key in example.sketched_keys() if key not in made]
        if missing:
            failed.append(f"{got}\n  has not the README's {missing}")
        if "/admin/keys" in example.command and "-X POST" in example.command:
            proxy.ids[EXAMPLE_KEY_ID] = made["id"]
    return failed


def test_every_readme_curl_example_answers_a_2xx(
    fake_upstream: FakeUpstream, curl: str, tmp_path: Path
) -> None:
    examples = curl_examples(README.read_text())
    failed: list[str] = []
    for token in (None, ADMIN_TOKEN):
        with serve(fake_upstream, tmp_path, token) as url:
            proxy = Proxy(url, token)
            if token is None:
                proxy.ids[EXAMPLE_RECORD_ID] = run_python_example(proxy)
                chosen = examples
            else:
                chosen = [example for example in examples if TOKEN_VARIABLE in example.command]
            mode = "local" if token is None else "locked"
            answers = run_examples(curl, proxy, chosen, tmp_path / "answer")
            failed += [f"[{mode}] {failure}" for failure in answers]
    assert not failed, "\n".join(failed)
