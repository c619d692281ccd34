from __future__ import annotations

import re
import subprocess
import sys
import time

from proxy.records import new_record_id


def test_record_ids_are_unique_and_sort_by_creation_time() -> None:
    ids = [new_record_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", record_id) for record_id in ids)
    now_ms = time.time_ns() // 1_000_000
    assert abs(int(ids[-1][:12], 16) - now_ms) < 5_000
    assert ids == sorted(ids, key=lambda record_id: record_id[:12])


def test_processes_draw_different_ids() -> None:
    """Workers and replicas start with their own random state (CPython also reseeds a
    forked child)."""
    code = "from proxy.records import new_record_id; print(new_record_id()[12:])"
    tails = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(3)
    }
    assert len(tails) == 3
