#!/usr/bin/env bash
# Build the learner image from this checkout: rlfleet/learner:<version> (or $1), FROM the
# same base as the rollout image, with the same wheels (rlfleet[rollout] and torch) made
# here, so the image build needs no package index. Environment: as deploy/rollout/build.sh
# (TORCH, TORCH_VARIANT=cuda with TORCH_INDEX for the GPU image, BASE); see
# deploy/dev/torch-image.sh.
set -euo pipefail
exec "$(dirname "$0")/../dev/torch-image.sh" learner "$@"
