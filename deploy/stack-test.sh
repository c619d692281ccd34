#!/usr/bin/env bash
# The compose stack end to end (see tests/deploy/stack.py): stand-in bases, image, stack,
# requests through nginx, Postgres stopped in the middle, a replica restarted on another
# address, records counted. Needs a Docker daemon and, for the stand-ins, root and debootstrap.
#   bash deploy/stack-test.sh [--no-standins] [--requests N] [--outage SECONDS] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m tests.deploy.stack "$@"
