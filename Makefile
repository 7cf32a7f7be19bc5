# Set-up and the two entry points of the README. Each target creates .venv on its own.
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
# The exact wheels that lie on this machine's disk; pyproject.toml keeps loose lower bounds.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: install run test lint bench data gpu-check wheel-smoke

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(TORCH_PINS)
	$(VPY) -m pip install --quiet -e '.[test,viz,albumentations]' $(TORCH_PINS)
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST ships as a Debian package; install it where apt is available and it is missing.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
		echo "could not install dataset-fashion-mnist; pass --data-dir to a copy of Fashion-MNIST"; \
	fi

run: install data
	$(VENV)/bin/timm-sage train --config fashion_mnist_sage

test: install data
	HF_HUB_OFFLINE=1 $(VPY) -m pytest

lint: install
	$(VPY) -m ruff check timm_sage tests

bench: install
	$(VENV)/bin/timm-sage bench mix

# On a machine with a CUDA GPU and its own torch: CUDA tests and the CUDA benchmarks (docs/benchmarks.md).
gpu-check:
	.ci/gpu_check.sh $(OUT)

# The built wheel in a fresh virtual environment (not editable, repository off the path): import, version,
# configs and a one-epoch run on 300 images (installs torch into a temporary venv: a few minutes).
wheel-smoke: data
	PY=$(PY) TORCH_PINS="$(TORCH_PINS)" FMNIST=$(FMNIST) bash .ci/wheel_smoke.sh
