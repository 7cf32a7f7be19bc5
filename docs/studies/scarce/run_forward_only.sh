#!/usr/bin/env bash
# The data-scarce study's forward-only rows (docs/results.md): the three forward-only saliency sources
# beside the methods they are measured against (no mixing, CutMix, SAGE with the cross-entropy saliency
# loss, with its clean term as a pass and in the batch), 3 seeds, equal epochs and equal wall-clock
# (--equal-time, seconds per epoch measured with the configs taken in turn). One torch thread; a finished
# run is skipped and the record is restored first, so the command resumes.
set -eu
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
c=docs/studies/scarce/configs/fashion_mnist_scarce
.venv/bin/timm-sage study "${c}"_{vanilla,cutmix,sage_ce,sage_ce_inbatch,sage_ce_cam,sage_ce_features,sage_ce_cam_half}.yaml \
    --seeds 0 1 2 --output runs/scarce3 --record docs/studies/scarce/record_forward_only --select-on val \
    --equal-time --time-steps 40 --report docs/results.md --section study-scarce-forward \
    --figure docs/figures/study_scarce_forward.png --title "Fashion-MNIST, 1,000 training images" "$@"
