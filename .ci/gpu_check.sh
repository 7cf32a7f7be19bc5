#!/usr/bin/env bash
# The GPU check, sized to fit one 10-minute command (the stage limits add up to 520 s), in stages that
# cannot lose each other's results: every stage logs to OUTDIR/<stage>.txt as it runs (unbuffered), and
# OUTDIR/gpu_check.json (the stages so far: status, seconds, limit, log) is rewritten after each one; a
# stage that fails is reported and the next one runs; the exit status is the number of failed stages.
#   0. preflight (seconds): every module the stages import, the CUDA device (a kernel runs on it), the
#      compiler the compile stage needs; if anything is missing it stops at once, listing all of it
#      (exit 100). Nothing is installed: the check runs on the machine's own torch, timm and the rest
#      (no network), with this checkout first on PYTHONPATH;
#   1. cuda_tests: pytest -m cuda over the whole tests folder (the CUDA, AMP, no-sync and fuzz tests;
#      files that need an absent extra, albumentations, skip instead of breaking collection);
#   2. sync_step: SAGE steps of a timm resnet under torch.cuda.set_sync_debug_mode("error");
#   3. train_py: timm's train.py (TIMM_TRAIN_PY=/path/to/pytorch-image-models/train.py), else the
#      train.py-shaped harness tests/timm_train_like.py, with --amp --channels-last and the plugin;
#   4. bench: `bench mix step` on CUDA (bf16 autocast, channels_last; resnet50 at 224 x 224, B=64, exact
#      and pooled search), each suite's rows written to bench_cuda.json as the suite finishes, and the
#      Markdown section of docs/benchmarks.md (a copy in OUTDIR);
#   5. compile: `bench compile`, the SAGE step under torch.compile beside eager (resnet18: a few cold
#      inductor compiles of a small graph).
#   Usage: .ci/gpu_check.sh [--device cpu|cuda] [OUTDIR]   (make gpu-check; OUTDIR: where the results go,
#   default $OUT or output/gpu). GPU_CHECK_STAGES="bench compile" runs only the stages named (default:
#   all five; the preflight always runs), so the check also splits into two commands that each keep
#   their results in OUTDIR.
# --device cpu is the dry run that CI makes (tests/test_gpu_check.py): tiny sizes, the same stages and the
# same pytest selection, so that the script and its Python cannot rot between GPU machines.
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
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: > "$out/stages.txt"
failed=0
records=()

# The stages so far as JSON, written atomically after every stage (a later stage killed by the command's
# own time limit leaves this file as it was).
write_json() {
  local body
  body=$(IFS=,; echo "${records[*]}")
  printf '{"device": "%s", "failed": %d, "stages": [%s]}\n' "$device" "$failed" "$body" > "$out/gpu_check.json.tmp"
  mv "$out/gpu_check.json.tmp" "$out/gpu_check.json"
}

# stage NAME SECONDS COMMAND...: run it under a time limit, log to OUTDIR/NAME.txt, record the outcome.
stages="${GPU_CHECK_STAGES:-cuda_tests sync_step train_py bench compile}"
stage() {
  local name="$1" limit="$2"
  shift 2
  case " $stages " in *" $name "*) ;; *) return 0 ;; esac
  local start=$SECONDS status result
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  status=$?
  tail -n 8 "$out/$name.txt"
  if [ "$status" -eq 0 ]; then
    result=ok
    echo "$name ok $((SECONDS - start))s" | tee -a "$out/stages.txt"
  else
    result=FAILED
    [ "$status" -eq 124 ] && result=TIMEOUT
    echo "$name FAILED (exit $status) $((SECONDS - start))s, log: $out/$name.txt" | tee -a "$out/stages.txt"
    failed=$((failed + 1))
  fi
  records+=("{\"stage\": \"$name\", \"status\": \"$result\", \"exit\": $status, \"seconds\": $((SECONDS - start)), \"limit\": $limit, \"log\": \"$name.txt\"}")
  write_json
}

write_json
echo "== preflight"
if ! timeout 60 "$py" .ci/gpu_check.py preflight --device "$device" --out "$out" --stages "$stages"; then
  echo "preflight FAILED: see $out/preflight.json; nothing else ran" | tee -a "$out/stages.txt"
  records+=("{\"stage\": \"preflight\", \"status\": \"FAILED\", \"log\": \"preflight.json\"}")
  failed=1
  write_json
  exit 100
fi
if [ "$device" = cuda ]; then
  repeats=(--repeats 10 --warmup 3)
  quick=()
  backend=(--compile-backend inductor)
else
  repeats=(--repeats 1 --warmup 0)
  quick=(--quick)
  backend=(--compile-backend aot_eager)  # the dry run: no C compiler wait
fi
# The same selection on both devices: every test file is collected; without CUDA the tests skip.
stage cuda_tests 120 "$py" -m pytest -q -p no:cacheprovider --strict-markers -m cuda tests -rs \
  --junitxml "$out/cuda_tests.xml"
stage sync_step 60 "$py" .ci/gpu_check.py sync-step --device "$device" --out "$out"
stage train_py 80 "$py" .ci/gpu_check.py train --device "$device" --out "$out"
cp docs/benchmarks.md "$out/benchmarks.md"
stage bench 150 "$py" -m timm_sage.tools.cli bench mix step --device "$device" "${repeats[@]}" "${quick[@]}" \
  --json "$out/bench_$device.json" --report "$out/benchmarks.md"
stage compile 110 "$py" -m timm_sage.tools.cli bench compile --device "$device" "${repeats[@]}" "${quick[@]}" \
  "${backend[@]}" --json "$out/bench_compile_$device.json" --report "$out/benchmarks.md"
echo "== summary ($failed failed)"
cat "$out/stages.txt"
exit "$failed"
