#!/usr/bin/env bash
# The GPU check (at most about 8 minutes on one H100/H200): the CUDA tests, then `bench mix` and
# `bench step` on CUDA (PreActResNet18 32px B=100 and timm resnet50 224px B=64, bf16 autocast,
# channels_last; exact and cheap saliency), writing JSON and the Markdown section of docs/benchmarks.md.
# It uses the machine's own torch, timm and the rest where present and installs only what is missing.
#   Usage: .ci/gpu_check.sh [OUTDIR]      (make gpu-check; OUTDIR: where the results go)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-output/gpu}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
# Only what the machine lacks (no torch reinstall): the package itself without dependencies.
for mod in timm hypothesis pytest yaml safetensors tqdm huggingface_hub matplotlib; do
  "$py" -c "import $mod" 2>/dev/null || "$py" -m pip install --quiet "$( [ "$mod" = yaml ] && echo pyyaml || echo "$mod")"
done
"$py" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
export HF_HUB_OFFLINE=1
timeout 180 "$py" -m pytest -q -p no:cacheprovider -k "cuda or CUDA" tests/test_amp.py tests/test_fuzz.py tests/test_one_step.py \
  2>&1 | tee "$out/cuda_tests.txt" | tail -5
cp docs/benchmarks.md "$out/benchmarks.md"
timeout 420 "$py" -m timm_sage.tools.cli bench mix step --device cuda --repeats 20 --warmup 5 \
  --json "$out/bench_cuda.json" --report "$out/benchmarks.md" 2>&1 | tee "$out/bench_cuda.txt" | tail -40
