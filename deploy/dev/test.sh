#!/usr/bin/env bash
# The project's test command. Needs the host provisioned (deploy/host/setup.sh) and .venv
# installed (pip install -e '.[dev]'); .ci/run does both, then runs this last.
# Extra arguments go to pytest. pytest's exit status is the script's: 5 (no tests ran) fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m pytest "$@"
