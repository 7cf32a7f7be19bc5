#!/usr/bin/env bash
# The GPU check (about 7 minutes on one H100/H200; the stage limits add up to 11 minutes), in stages that
# cannot lose each other's results: a stage that fails is reported (its log kept) and the next one runs;
# the exit status is the number of failed stages.
#   1. cuda_tests: the tests marked `cuda` (pytest -m cuda), the AMP, no-sync and CUDA fuzz tests;
#   2. sync_step: SAGE steps of a timm resnet under torch.cuda.set_sync_debug_mode("error");
#   3. train_py: timm's train.py (TIMM_TRAIN_PY=/path/to/pytorch-image-models/train.py), else the
#      train.py-shaped harness tests/timm_train_like.py, with --amp --channels-last and the plugin;
#   4. bench: `bench mix step` on CUDA (bf16 autocast, channels_last; resnet50 at 224 x 224, B=64, exact
#      and pooled search), each suite's rows written to bench_cuda.json as the suite finishes, and the
#      Markdown section of docs/benchmarks.md (a copy in OUTDIR);
#   5. compile: `bench compile`, the SAGE step under torch.compile beside eager (see below).
# It uses the machine's own torch, timm and the rest where present and installs only what is missing.
#   Usage: .ci/gpu_check.sh [--device cpu|cuda] [OUTDIR]   (make gpu-check; OUTDIR: where the results go, default $OUT or output/gpu)
# --device cpu is the dry run that CI makes (tests/test_gpu_check.py): tiny sizes, the same stages, so
# that the script and its Python cannot rot between GPU machines. GPU_CHECK_STAGES="sync_step bench"
# runs only the stages named (default: all five).
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda
if [ "${1:-}" = "--device" ]; then
  device="${2:?--device needs cpu or cuda}"
  shift 2
fi
out="${1:-${OUT:-output/gpu}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1
: > "$out/stages.txt"
failed=0

# stage NAME SECONDS COMMAND...: run it under a time limit, log to OUTDIR/NAME.txt, record the outcome.
stages="${GPU_CHECK_STAGES:-cuda_tests sync_step train_py bench compile}"
stage() {
  local name="$1" limit="$2"
  shift 2
  case " $stages " in *" $name "*) ;; *) return 0 ;; esac
  local start=$SECONDS status
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  status=$?
  tail -n 8 "$out/$name.txt"
  if [ "$status" -eq 0 ]; then
    echo "$name ok $((SECONDS - start))s" | tee -a "$out/stages.txt"
  else
    echo "$name FAILED (exit $status) $((SECONDS - start))s, log: $out/$name.txt" | tee -a "$out/stages.txt"
    failed=$((failed + 1))
  fi
}

if [ "$device" = cuda ]; then
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
  # Only what the machine lacks (no torch reinstall): the package itself without dependencies.
  for mod in timm hypothesis pytest yaml safetensors tqdm huggingface_hub matplotlib; do
    "$py" -c "import $mod" 2>/dev/null || "$py" -m pip install --quiet "$( [ "$mod" = yaml ] && echo pyyaml || echo "$mod")"
  done
  "$py" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
  stage cuda_tests 150 "$py" -m pytest -q -p no:cacheprovider --strict-markers -m cuda tests
  repeats=(--repeats 10 --warmup 3)
  quick=()
else
  # The dry run: the marker selects (and skips) the CUDA tests of one file; everything else is tiny.
  stage cuda_tests 60 "$py" -m pytest -q -p no:cacheprovider --strict-markers -m cuda tests/test_gpu_path.py
  repeats=(--repeats 1 --warmup 0)
  quick=(--quick)
fi
stage sync_step 60 "$py" .ci/gpu_check.py sync-step --device "$device" --out "$out"
stage train_py 90 "$py" .ci/gpu_check.py train --device "$device" --out "$out"
cp docs/benchmarks.md "$out/benchmarks.md"
stage bench 180 "$py" -m timm_sage.tools.cli bench mix step --device "$device" "${repeats[@]}" "${quick[@]}" \
  --json "$out/bench_$device.json" --report "$out/benchmarks.md"
# 5. compile: `bench compile` (vanilla and SAGE steps, compiled with inductor and eager; resnet50 at 224 x 224,
# B=64, bf16, channels_last on CUDA); the dry run compiles with aot_eager (no C compiler wait).
if [ "$device" = cuda ]; then backend=(--compile-backend inductor); else backend=(--compile-backend aot_eager); fi
stage compile 200 "$py" -m timm_sage.tools.cli bench compile --device "$device" "${repeats[@]}" "${quick[@]}" \
  "${backend[@]}" --json "$out/bench_compile_$device.json" --report "$out/benchmarks.md"
echo "== summary ($failed failed)"
cat "$out/stages.txt"
exit "$failed"
