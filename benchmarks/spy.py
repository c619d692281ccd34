"""py-spy beside a benchmark case: sample the proxy while the load runs, then name its hot spots.

``record`` starts py-spy on the proxy (and its workers) in raw form, one collapsed stack per
line; ``top_entries`` turns that file into the functions holding the most samples, by their
own time (the innermost frame) and by inclusive time (anywhere on the stack).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOTS = (
    "<frozen runpy>)", "proxy/__main__.py)", "proxy/cli.py)", "proxy/commands/serve.py)",
    "uvicorn/main.py)", "uvicorn/server.py)", "uvicorn/_compat.py)", "asyncio/runners.py)",
    "threading.py)", "concurrent/futures/thread.py)",
)  # fmt: skip
"""Files of the frames under every sample of their thread: their inclusive time says nothing."""


def record(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` and its subprocesses for ``seconds``; None without py-spy."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if spy is None:
        return None
    command = [
        spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", "250",
        "--nonblocking", "--duration", str(max(1, int(seconds))), "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_entries(
    raw: Path, count: int = 12
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total samples, the ``count`` hottest functions by own samples and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = [_function(frame) for frame in stack.split(";")]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        hits = int(samples)
        total += hits
        own[frames[-1]] += hits
        for frame in set(frames):
            if not frame.endswith(ROOTS):
                inclusive[frame] += hits
    return total, own.most_common(count), inclusive.most_common(count)


def _function(frame: str) -> str:
    """``name (path/module.py:123)`` without its line number, so one function is one entry."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name


def print_profile(raw: Path, label: str) -> None:
    if not raw.exists():
        print(f"profile {label}: no samples (is py-spy allowed to attach here?)")
        return
    total, own, inclusive = top_entries(raw)
    print(f"profile {label}: {total} samples")
    for title, entries in (("own", own), ("inclusive", inclusive)):
        print(f"  top by {title} time:")
        for function, hits in entries:
            print(f"    {100 * hits / max(1, total):5.1f}%  {function}")
