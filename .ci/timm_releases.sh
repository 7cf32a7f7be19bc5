#!/usr/bin/env bash
# Lay out the timm releases that tests/test_timm_releases.py runs the plugin against, at install time (a
# test never downloads): DIR/<version>/timm (the release's wheel, unpacked: timm is pure Python) and
# DIR/<version>/train.py (the release's tag of pytorch-image-models), a source tree as a clone has it.
# 0.9.12 is below the floor (it must fail on import with one message); 0.9.16 is the floor.
# Usage: .ci/timm_releases.sh DIR [PYTHON]. train.py comes from TIMM_SAGE_TIMM_GIT (a pytorch-image-models
# git directory: `git show vX:train.py`) when set, else from GitHub. A release whose wheel cannot be
# downloaded is left out with a message; one whose train.py cannot be fetched keeps only its import test.
set -uo pipefail
DIR=${1:?usage: .ci/timm_releases.sh DIR [PYTHON]}
PY=${2:-python3}
RELEASES=${TIMM_SAGE_RELEASES:-"0.9.12 0.9.16 1.0.9 1.0.20 1.0.28"}
mkdir -p "$DIR"
for version in $RELEASES; do
    target="$DIR/$version"
    if [ -f "$target/timm/__init__.py" ] && [ -f "$target/train.py" ]; then
        continue
    fi
    wheels=$(mktemp -d)
    if ! "$PY" -m pip download --quiet --no-deps "timm==$version" -d "$wheels"; then
        echo "timm_releases: could not download the timm $version wheel; left out" >&2
        rm -rf "$wheels"
        continue
    fi
    mkdir -p "$target.partial"
    "$PY" -m zipfile -e "$wheels"/timm-"$version"-*.whl "$target.partial"
    rm -rf "$wheels"
    url="https://raw.githubusercontent.com/huggingface/pytorch-image-models/v$version/train.py"
    if [ -n "${TIMM_SAGE_TIMM_GIT:-}" ]; then
        git --git-dir "$TIMM_SAGE_TIMM_GIT" show "v$version:train.py" > "$target.partial/train.py" \
            || rm -f "$target.partial/train.py"
    elif ! "$PY" -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" \
            "$url" "$target.partial/train.py" 2>/dev/null; then
        rm -f "$target.partial/train.py"
    fi
    [ -f "$target.partial/train.py" ] || echo "timm_releases: no train.py of v$version; its train.py test skips" >&2
    rm -rf "$target" && mv "$target.partial" "$target"
done
echo "timm_releases: $(ls "$DIR" | tr '\n' ' ')in $DIR"
