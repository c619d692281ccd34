"""A small tmpfs file system of its own, for tests that fill a disk on purpose."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["small_tmpfs"]


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes on ``directory`` (made if missing) for the block.

    Skips the test where mounting is not permitted (not root, no CAP_SYS_ADMIN, a
    container without it): a disk that really fills cannot be imitated faithfully.
    """
    directory.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small full file system")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield directory
    finally:
        subprocess.run(
            ["umount", "-l", str(directory)], capture_output=True, timeout=30, check=True
        )
