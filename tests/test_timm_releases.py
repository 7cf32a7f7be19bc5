"""The plugin against several timm releases, each with its own ``train.py`` run from inside that release's
source tree, as a user runs a clone of pytorch-image-models (the script's folder first on the path, so
its ``timm`` is the one imported): one epoch of two SAGE steps on a tiny fake ImageFolder, on the CPU.

The releases are laid out by ``.ci/timm_releases.sh`` (run by ``.ci/run`` at install time) in the folder
that ``TIMM_SAGE_TIMM_RELEASES`` names: one folder per release, holding its ``timm`` package (the wheel,
unpacked) and its ``train.py`` (the release's tag). Without that variable these tests skip: a test never
downloads anything. A release below the floor (``timm_sage._timm_compat.TIMM_FLOOR``) must fail on
import with one message naming its version, its path and the floor.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import timm_sage
from timm_sage import _timm_compat

ROOT = Path(timm_sage.__file__).resolve().parent.parent
RELEASES = os.environ.get("TIMM_SAGE_TIMM_RELEASES")

# Imported by train.py after the plugin (--device-modules timm_sage.plugin sage_probe): at exit, what the
# plugin's mixers did, and which timm the run imported.
PROBE = '''
import atexit, json, os, sys


def _report():
    import timm
    from timm_sage import plugin
    state = plugin.current_state()
    mixers = state.mixers if state is not None else []
    report = {
        "timm_version": timm.__version__,
        "timm_file": timm.__file__,
        "calls": sum(m._calls for m in mixers),
        "methods": [m.last.method if m.last is not None else None for m in mixers],
        "mixed": [bool(m.last.mixed) if m.last is not None and m.last.mixed is not None else None
                  for m in mixers],
        "bound": [m.model is not None for m in mixers],
    }
    with open(os.environ["SAGE_PROBE_OUT"], "w") as f:
        json.dump(report, f)


atexit.register(_report)
'''


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _releases() -> list[Path]:
    if not RELEASES or not Path(RELEASES).is_dir():
        return []
    return sorted(
        (p for p in Path(RELEASES).iterdir() if (p / "timm" / "__init__.py").is_file()),
        key=lambda p: _version_key(p.name),
    )


def _release_version(release: Path) -> str:
    text = (release / "timm" / "version.py").read_text()
    return re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text).group(1)


def _fake_imagefolder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(4):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "probe").mkdir(exist_ok=True)
    (tmp_path / "probe" / "sage_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path / "probe")]),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        SAGE_PROBE_OUT=str(tmp_path / "probe.json"),
        PYTHONWARNINGS="ignore",
    )
    return env


pytestmark = pytest.mark.skipif(
    not _releases(), reason="TIMM_SAGE_TIMM_RELEASES names no folder of timm releases (.ci/timm_releases.sh)"
)


def _floor_key() -> tuple[int, ...]:
    return _version_key(_timm_compat.TIMM_FLOOR)


@pytest.mark.parametrize("release", _releases(), ids=lambda p: p.name)
def test_train_py_of_a_release_runs_sage_from_its_source_tree(release: Path, tmp_path: Path) -> None:
    version = _release_version(release)
    if _version_key(version) < _floor_key():
        pytest.skip(f"timm {version} is below the floor {_timm_compat.TIMM_FLOOR}: see the import test")
    if not (release / "train.py").is_file():
        pytest.skip(f"no train.py in {release} (its tag could not be fetched at install time)")
    data = _fake_imagefolder(tmp_path / "data")
    command = [
        sys.executable, "train.py", str(data), "--model", "resnet18", "--num-classes", "2",
        "--img-size", "32", "-b", "4", "--epochs", "1", "--sched", "step", "--warmup-epochs", "0",
        "--workers", "1",
        "--device", "cpu", "--mixup", "1.0", "--mixup-mode", "sage", "--log-interval", "1",
        "--output", str(tmp_path / "out"), "--device-modules", "timm_sage.plugin", "sage_probe",
    ]  # fmt: skip
    run = subprocess.run(
        command, cwd=release, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "--mixup-mode sage installed" in output
    report = json.loads((tmp_path / "probe.json").read_text())
    # The release's own timm, from its source tree, ran the plugin.
    assert report["timm_version"] == version
    assert Path(report["timm_file"]).resolve().is_relative_to(release.resolve())
    # Two training batches, each SAGE-mixed from the bound model.
    assert report["calls"] == 2 and report["methods"] == ["sage"] and report["mixed"] == [True]
    assert report["bound"] == [True]


@pytest.mark.parametrize("release", _releases(), ids=lambda p: p.name)
def test_a_release_below_the_floor_fails_on_import_naming_version_path_and_floor(
    release: Path, tmp_path: Path
) -> None:
    version = _release_version(release)
    run = subprocess.run(
        [sys.executable, "-c", "import timm_sage"], cwd=release, env=_env(tmp_path), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    if _version_key(version) >= _floor_key():
        assert run.returncode == 0, run.stderr[-3000:]
        return
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: timm_sage needs timm " + _timm_compat.TIMM_FLOOR), last
    assert f"timm {version} at {release.resolve() / 'timm' / '__init__.py'}" in last, last
