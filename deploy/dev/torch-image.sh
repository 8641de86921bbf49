#!/usr/bin/env bash
# Build one of the images that hold torch and rlfleet[rollout] from this checkout:
# deploy/NAME/Dockerfile as rlfleet/NAME:<version> (or TAG). NAME: rollout or learner.
# Every wheel (rlfleet[rollout], torch and their dependencies) is made here, with this
# machine's own pip configuration, so the image build needs no package index. The build
# context holds the wheels, the Dockerfile and examples/data (the learner's shipped sets).
#   usage: deploy/dev/torch-image.sh NAME [TAG]
# Environment (all optional):
#   TORCH          the torch release (default 2.13.0, the one CI installs)
#   TORCH_VARIANT  cpu (default) or cuda. cpu insists on a +cpu wheel: where the host's pip
#                  does not already provide one, set TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   TORCH_INDEX    an extra index for torch (e.g. https://download.pytorch.org/whl/cu128)
#   BASE           the Debian bookworm base (default: the locally debootstrapped one when
#                  present, deploy/host/setup.sh makes it; else debian:bookworm-slim)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 NAME [TAG]" >&2; exit 2; }
name=$1
cd "$(dirname "$0")/../.."
[ -f "deploy/$name/Dockerfile" ] || { echo "$name image: no deploy/$name/Dockerfile" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("rlfleet"))' 2>/dev/null || echo dev)
variant=${TORCH_VARIANT:-cpu}
case "$variant" in
  cpu) suffix="" ;;
  cuda) suffix="-cuda" ;;
  *) echo "$name image: TORCH_VARIANT must be cpu or cuda, not $variant" >&2; exit 2 ;;
esac
tag=${2:-rlfleet/$name:$version$suffix}
if [ -z "${BASE:-}" ]; then
  if docker image inspect rlfleet/bookworm-base:local >/dev/null 2>&1; then
    BASE=rlfleet/bookworm-base:local
  else
    BASE=debian:bookworm-slim
  fi
fi
ctx=$(mktemp -d "/var/tmp/rlfleet-$name-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
index=()
[ -n "${TORCH_INDEX:-}" ] && index=(--extra-index-url "$TORCH_INDEX")
echo "$name image: wheels for $(git rev-parse --short HEAD 2>/dev/null || echo this tree)" \
  "with torch==${TORCH:-2.13.0} ($variant)" >&2
EXTRAS=rollout PYTHON=$PY deploy/dev/wheel.sh "$ctx/wheels" "${index[@]}" "torch==${TORCH:-2.13.0}" \
  >"$ctx/wheel.log" 2>&1 || { tail -n 20 "$ctx/wheel.log" >&2; exit 1; }
torch_wheel=$(cd "$ctx/wheels" && ls torch-*.whl)
case "$variant:$torch_wheel" in
  cpu:*+cpu-*) ;;
  cpu:*) echo "$name image: got $torch_wheel, not a CPU build;" \
    "set TORCH_INDEX=https://download.pytorch.org/whl/cpu" >&2; exit 1 ;;
  cuda:*+cpu-*) echo "$name image: got the CPU build $torch_wheel for the cuda variant;" \
    "set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cu128)" >&2; exit 1 ;;
esac
cp "deploy/$name/Dockerfile" "$ctx/"
mkdir -p "$ctx/examples"
cp -r examples/data "$ctx/examples/"
echo "$name image: building $tag FROM $BASE ($torch_wheel)" >&2
docker build -q --build-arg "BASE=$BASE" -t "$tag" "$ctx" >/dev/null
echo "$tag"
