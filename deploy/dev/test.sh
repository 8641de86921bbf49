#!/usr/bin/env bash
# Run rlfleet's checks and tests on this machine, installing what they need first
# (host packages, Docker engine and images, the virtualenv). Used as-is by CI.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/host/setup.sh
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
.venv/bin/rlfleet sandbox prepare --backend docker
.venv/bin/rlfleet sandbox prepare --backend local
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
