#!/usr/bin/env bash
# The scenes-3 gates (docs/results.md): no mixing over 5 seeds (the test-set gate), CutMix, timm's recipe
# and SAGE with cross-entropy saliency over 3 seeds (the stall gate). One process, one torch thread; a
# finished run is skipped and the record under docs/studies/scenes3/record is restored first, so the same
# command resumes a stopped gate anywhere.
set -eu
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
configs=docs/studies/scenes3/configs
common=(--output runs/scenes3 --record docs/studies/scenes3/record --select-on val)
.venv/bin/timm-sage study $configs/fashion_mnist_scenes3_vanilla.yaml --seeds 0 1 2 3 4 "${common[@]}"
.venv/bin/timm-sage study $configs/fashion_mnist_scenes3_{sage_ce,cutmix,timm_recipe}.yaml --seeds 0 1 2 "${common[@]}"
