#!/usr/bin/env bash
# The scenes-3 frontier (docs/results.md): test top-1 against training compute, every method trained to
# completion at 0.5x, 1x and 2x of no mixing's 15-epoch time, and the method best on validation at 2x
# in each family (no mixing, timm's recipe, the forward-only SAGE) at 4x, 5 seeds at every point. One
# torch thread per process; start it in two shells at once to use both cores of a 2-core box (each run
# is claimed by one process). Resumable: finished runs are skipped, an interrupted run resumes from its
# checkpoint, and the record under docs/studies/scenes3/record (runs, plan, clock) is restored first.
# SEEDS="5 6 7" trains more seeds of a stage (default 0 1 2 3 4; the report reads seeds 0 to 7, where a
# decision hangs on the 5: a method reports the seeds it has, a paired difference the seeds both have).
# Edit this file only while no stage runs, or replace it whole (mv): bash reads it as it goes.
#   run_frontier.sh plan        time every config in one process (--time-steps) and write the plan
#   run_frontier.sh select      the forward-only candidates, 3 seeds at 1x (chosen on validation)
#   run_frontier.sh main B...   the seven methods at budgets B (default 0.5 1 2), 5 seeds
#   run_frontier.sh chosen STEM B...   one config (the chosen forward-only one; the 4x leaders) at budgets B
#   run_frontier.sh report      the tables into docs/results.md and the figure (trains nothing)
set -eu
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
c=docs/studies/scenes3/configs/fashion_mnist_scenes3
main=("${c}"_{vanilla,cutmix,timm_recipe,timm_recipe_clean,sage,sage_ce,sage_ce_random}.yaml)
candidates=("${c}"_sage_ce_{cam,features,cam_half}.yaml)
common=(--output runs/scenes3 --record docs/studies/scenes3/record --select-on val --time-steps 40
        --budget-reference vanilla --skip-equal-epochs)
# The questions the report's named contrasts answer (set before the runs, their own Holm family): does
# SAGE's search pay beyond the same mask and clean term with a random translation; does SAGE pay beyond
# timm's recipe given the same clean term; does the clean term pay for its pass; the cross-entropy
# saliency against the paper's; the forward-only source against the gradient source.
contrasts=(sage_ce:sage_ce_random sage_ce:timm_recipe_clean timm_recipe_clean:timm_recipe sage_ce:sage
           sage_ce_cam_half:sage_ce)
study=(.venv/bin/timm-sage study)
read -ra seeds <<< "${SEEDS:-0 1 2 3 4}"
stage=${1:-main}
shift || true
case $stage in
  plan) "${study[@]}" "${main[@]}" "${candidates[@]}" --seeds 0 1 2 3 4 "${common[@]}" --frontier 0.5 1 2 --report-only ;;
  select) "${study[@]}" "${candidates[@]}" --seeds 0 1 2 "${common[@]}" --frontier 1 ;;
  main) (( $# )) || set -- 0.5 1 2; "${study[@]}" "${main[@]}" --seeds "${seeds[@]}" "${common[@]}" --frontier "$@" ;;
  chosen) stem=$1; shift; (( $# )) || set -- 0.5 1 2
          "${study[@]}" "${c}_${stem}.yaml" --seeds "${seeds[@]}" "${common[@]}" --frontier "$@" ;;
  report) "${study[@]}" "${main[@]}" "${candidates[@]}" --seeds 0 1 2 3 4 5 6 7 "${common[@]}" --frontier 0.5 1 2 4 \
            --report-only --report docs/results.md --section study-scenes3-frontier \
            --frontier-figure docs/figures/scenes3_frontier.png --title "Scenes-3" --contrast "${contrasts[@]}" ;;
  *) echo "unknown stage $stage (plan, select, main, chosen, report)" >&2; exit 2 ;;
esac
