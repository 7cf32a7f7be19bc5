#!/usr/bin/env bash
# The stall probe of docs/studies/scenes3 (docs/results.md): SAGE with cross-entropy saliency (the method
# that stalled most on scenes-2) at each candidate set-up, seeds 0-4, the first 4 epochs of the 30-epoch
# schedule (stopped by the trainer's step hook, so the learning-rate schedule is the full run's). One
# torch thread. Writes one JSON line per run to docs/studies/scenes3/probe/probe.jsonl (resumable: a run
# already there is skipped).
set -u
cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
out=docs/studies/scenes3/probe/probe.jsonl
config=${PROBE_CONFIG:-docs/studies/scenes3/probe/probe_sage_ce.yaml}
steps=$((4 * 62 + 1))  # the first step of epoch 5 stops it, after epoch 4 is recorded
declare -A kwargs=(
  [w8]="{}" [w8_zero]="{zero_init_residual: true}" [w8_warm3]="{}" [w12]="{width: 0.1875}"
  [w12_zero]="{width: 0.1875, zero_init_residual: true}" [w16]="{width: 0.25}"
)
declare -A extra=([w8_warm3]="--warmup_epochs 3 --warmup_lr 0.01")
for variant in ${PROBE_VARIANTS:-w8 w8_zero w12_zero w12 w8_warm3 w16}; do
  for seed in 0 1 2 3 4; do
    key="$variant seed$seed"
    grep -q "\"key\": \"$key\"" "$out" 2>/dev/null && continue
    dir=output/probe/$variant-seed$seed
    rm -rf "$dir"; mkdir -p output/probe
    TIMM_SAGE_STOP_AFTER_STEPS=$steps .venv/bin/timm-sage train -c "$config" --no-progress \
      --seed $seed --output output/probe --experiment "$variant-seed$seed" --model_kwargs "${kwargs[$variant]}" ${extra[$variant]:-} \
      > "$dir.log" 2>&1 || true
    python3 - "$dir" "$key" "$out" <<'PY'
import json, sys, pathlib
d, key, out = sys.argv[1:]
p = pathlib.Path(d) / "metrics.jsonl"
if not p.is_file():
    sys.exit(f"{key}: no metrics (see {d}.log)")
rows = [json.loads(l) for l in (pathlib.Path(d) / "metrics.jsonl").read_text().splitlines() if l.strip()]
keep = {k: [r.get(k) for r in rows] for k in ("train_loss", "val_top1", "epoch_time")}
with open(out, "a") as f:
    f.write(json.dumps({"key": key, **keep}) + "\n")
PY
  done
done
