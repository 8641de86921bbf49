#!/usr/bin/env bash
# Build the verifier service image from this checkout: rlfleet/verifier:<version> (or $1).
# Wheels are made here, with this machine's own pip configuration, so the image build needs
# no package index. BASE (env): the Debian bookworm base; default: the locally debootstrapped
# one when present (deploy/host/setup.sh makes it), else debian:bookworm-slim.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("rlfleet"))' 2>/dev/null || echo dev)
tag=${1:-rlfleet/verifier:$version}
if [ -z "${BASE:-}" ]; then
  if docker image inspect rlfleet/bookworm-base:local >/dev/null 2>&1; then
    BASE=rlfleet/bookworm-base:local
  else
    BASE=debian:bookworm-slim
  fi
fi
ctx=$(mktemp -d /var/tmp/rlfleet-server-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
echo "server image: wheels for $(git rev-parse --short HEAD 2>/dev/null || echo this tree)" >&2
PYTHON=$PY deploy/dev/wheel.sh "$ctx/wheels" >"$ctx/wheel.log" 2>&1 \
  || { tail -n 20 "$ctx/wheel.log" >&2; exit 1; }
cp deploy/server/Dockerfile "$ctx/"
echo "server image: building $tag FROM $BASE" >&2
docker build -q --build-arg "BASE=$BASE" -t "$tag" "$ctx" >/dev/null
echo "$tag"
