#!/usr/bin/env bash
# Build the rollout service image from this checkout: rlfleet/rollout:<version> (or $1).
# Every wheel (rlfleet[rollout], torch and their dependencies) is made here, with this
# machine's own pip configuration, so the image build needs no package index.
# Environment (all optional; deploy/dev/torch-image.sh, which builds it, says more):
#   TORCH          the torch release (default 2.13.0, the one CI installs)
#   TORCH_VARIANT  cpu (default) or cuda. cpu insists on a +cpu wheel: where the host's pip
#                  does not already provide one, set TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   TORCH_INDEX    an extra index for torch (e.g. https://download.pytorch.org/whl/cu128)
#   BASE           the Debian bookworm base (default: the locally debootstrapped one when
#                  present, deploy/host/setup.sh makes it; else debian:bookworm-slim)
set -euo pipefail
exec "$(dirname "$0")/../dev/torch-image.sh" rollout "$@"
