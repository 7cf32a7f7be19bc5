# Set-up and the two entry points of the README. Each target creates .venv on its own.
#   PY=/path/to/python3   the interpreter for .venv (default: the first Python >= 3.10 that runs, of
#                         python3.11, python3.12, python3.13, python3.10, python3)
#   DATA_DIR=FOLDER       make run: a folder holding Fashion-MNIST's four *-idx?-ubyte.gz files, for a
#                         machine where the Debian package cannot be installed (no root, no apt)
#   TORCH_INDEX=URL       pip's index for torch and torchvision, e.g. https://download.pytorch.org/whl/cpu
#                         for the CPU-only wheels (PyPI's Linux wheels bring CUDA: a 6 GB .venv)
#   ARGS="..."            extra arguments: to timm-sage train (make run), to pytest (make test)
ifeq ($(origin PY),undefined)
PY := $(shell for p in python3.11 python3.12 python3.13 python3.10 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV    := .venv
VPY     := $(VENV)/bin/python
# The tested releases (on this project's machine they lie on disk for Python 3.11; PyPI has them for 3.10 to
# 3.13); pyproject.toml keeps loose lower bounds.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
FMNIST  := /usr/share/datasets/fashion-mnist
DATA_DIR ?=
ARGS    ?=

.PHONY: install run test lint bench data gpu-check wheel-smoke

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(VPY) || test -n "$(PY)" || { echo "no Python 3.10 or newer found: make PY=/path/to/python3"; exit 1; }
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PINS)
	$(VPY) -m pip install --quiet -e '.[test,viz,albumentations]' $(TORCH_PINS)
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST ships as a Debian package; install it where apt is available and it is missing. So do the
# wallpapers of the scenes-3 benchmark (scenes_photos: pooled; docs/studies/scenes3/PHOTOGRAPHS.md).
WALLPAPERS := plasma-workspace-wallpapers mate-backgrounds ukui-wallpapers
data:
	@if [ -z "$(DATA_DIR)" ] && [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
		echo "could not install dataset-fashion-mnist; make run DATA_DIR=FOLDER (Fashion-MNIST's *-idx?-ubyte.gz)"; \
	fi
	@if [ ! -d /usr/share/wallpapers/Kite ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq $(WALLPAPERS)) || \
		echo "could not install $(WALLPAPERS): the scenes-3 benchmark and its tests need them"; \
	fi

# Each run gets its own folder: a second run goes to output/train/fashion_mnist_sage-1, and so on.
run: install data
	$(VENV)/bin/timm-sage train --config fashion_mnist_sage $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(ARGS)

test: install data
	HF_HUB_OFFLINE=1 $(VPY) -m pytest $(ARGS)

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
