"""The compose stack built and run for real: needs a Docker daemon, skipped without one.

1.5 to 2 minutes once the stand-in bases exist (building them adds about 3 the first time):
see tests/deploy/stack.py for what it does.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.stack import PROJECT, ROOT, docker_answers, main

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_answers(), reason="no Docker daemon answers `docker info`"),
]


def test_every_answered_request_through_the_stack_has_exactly_one_record() -> None:
    standins = subprocess.run(
        ["docker", "image", "inspect", "tallyproxy-standin/python:3.11-bookworm"],
        capture_output=True,
        check=False,
    )
    if standins.returncode != 0 and shutil.which("debootstrap") is None:
        pytest.skip("no stand-in base images and no debootstrap to build them")
    assert (ROOT / "docker-compose.yml").is_file() and PROJECT
    assert main([]) == 0, "see the JSON summary printed above"
