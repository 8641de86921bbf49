#!/usr/bin/env bash
# The project's test command (README): provision this host (packages, Docker engine,
# images), install the project in .venv, lint and type-check, then run the tests.
# Idempotent: on a provisioned machine the set-up steps take about a second.
# Extra arguments go to pytest; pytest's exit status is the script's (5, no tests, fails).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/host/setup.sh
[ -x .venv/bin/python ] || /usr/bin/env python3 -m venv .venv
# torch first, pinned: the CPU wheel (a bare `torch` requirement would pull a CUDA build).
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev,rollout]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/rlfleet sandbox prepare --backend local
.venv/bin/rlfleet sandbox prepare --backend docker
exec .venv/bin/python -m pytest "$@"
