#!/usr/bin/env bash
# Build rlfleet's wheel into OUTDIR from a clean copy of this checkout's files (those git
# tracks or would track), so nothing stale from an earlier build (build/, *.egg-info) can
# slip into it. Extra arguments go to `pip wheel` (e.g. --no-deps); without --no-deps the
# wheels of every runtime dependency are made too. EXTRAS (env): extras of rlfleet to
# include, e.g. EXTRAS=rollout.
#   usage: deploy/dev/wheel.sh OUTDIR [pip wheel args]
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [pip wheel args]" >&2; exit 2; }
out=$(realpath -m "$1"); shift
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
src=$(mktemp -d /var/tmp/rlfleet-wheel.XXXXXX)
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done \
  | tar -c --null --no-recursion -T - | tar -x -C "$src"
mkdir -p "$out"
"$PY" -m pip wheel -q "$@" -w "$out" "$src${EXTRAS:+[$EXTRAS]}"
