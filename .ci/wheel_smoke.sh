#!/usr/bin/env bash
# Wheel smoke test: build the wheel, install it into a fresh virtual environment (not editable, run from a
# temporary folder so the repository is not on the path) and use it as a pip user would: import, the
# version, the shipped configs, and a tiny training run from a shipped config by name.
# Usage: .ci/wheel_smoke.sh   (PY, TORCH_PINS and FMNIST may be overridden from the environment)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3.11}"
# The exact wheels that lie on this machine's disk (as in the Makefile).
TORCH_PINS="${TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}"
FMNIST="${FMNIST:-/usr/share/datasets/fashion-mnist}"
unset PYTHONPATH
umask 022  # the outputs must then be 0644
TMP="$(mktemp -d -t timm-sage-wheel-smoke.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
step() { echo "[wheel-smoke] $*"; }

step "fresh virtual environment in $TMP/venv"
"$PY" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
step "build the wheel"
"$VPY" -m pip wheel --quiet --no-deps -w "$TMP/dist" "$REPO"
WHEEL="$(ls "$TMP"/dist/timm_sage-*.whl)"
step "built $(basename "$WHEEL")"
step "install it with $TORCH_PINS"
# (pip's notes about the extra index's missing folders are noise here)
"$VPY" -m pip install --quiet $TORCH_PINS 2> >(grep -v "is ignored: it is neither" >&2)
"$VPY" -m pip install --quiet "$WHEEL" $TORCH_PINS 2> >(grep -v "is ignored: it is neither" >&2)

mkdir "$TMP/cwd"
cd "$TMP/cwd"
step "python -c 'import timm_sage'"
"$VPY" -c "import timm_sage, sys; print('imported', timm_sage.__version__, 'from', timm_sage.__file__)"
"$VPY" - "$REPO" <<'PYEOF'
import sys, timm_sage
if timm_sage.__file__.startswith(sys.argv[1]):
    sys.exit(f"timm_sage was imported from the repository ({timm_sage.__file__}), not the installed wheel")
PYEOF
SAGE="$TMP/venv/bin/timm-sage"
step "timm-sage --version"
"$SAGE" --version
step "timm-sage configs"
"$SAGE" configs
step "timm-sage train --config fashion_mnist_sage --train-subset 300 --epochs 1"
"$SAGE" train --config fashion_mnist_sage --data-dir "$FMNIST" --train-subset 300 --epochs 1 \
    --output "$TMP/out" --no-progress
RUN="$TMP/out/fashion_mnist_sage"
for name in args.yaml metrics.csv summary.json last.pth.tar; do
    test -s "$RUN/$name" || { echo "[wheel-smoke] missing $RUN/$name"; exit 1; }
    test "$(stat -c %a "$RUN/$name")" = 644 || { echo "[wheel-smoke] $RUN/$name is not 0644"; exit 1; }
done
step "outputs: $(cd "$RUN" && stat -c '%n %a' * | tr '\n' ' ')"
step "last.pth.tar loads with timm.models.load_checkpoint (weights_only)"
"$VPY" -c "
import sys, timm, timm_sage.models
model = timm.create_model('preactresnet18_tiny', in_chans=1, num_classes=10)
timm.models.load_checkpoint(model, sys.argv[1])
print('loaded', sys.argv[1])
" "$RUN/last.pth.tar"
step "passed"
