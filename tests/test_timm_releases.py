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

import subprocess
import sys
from pathlib import Path

import pytest
from timm_releases import (
    fake_imagefolder,
    release_version,
    releases,
    run_train_py_with_probe,
    train_env,
    version_key,
)

from timm_sage import _timm_compat

pytestmark = pytest.mark.skipif(
    not releases(), reason="TIMM_SAGE_TIMM_RELEASES names no folder of timm releases (.ci/timm_releases.sh)"
)


def _floor_key() -> tuple[int, ...]:
    return version_key(_timm_compat.TIMM_FLOOR)


@pytest.mark.parametrize("release", releases(), ids=lambda p: p.name)
def test_train_py_of_a_release_runs_sage_from_its_source_tree(release: Path, tmp_path: Path) -> None:
    version = release_version(release)
    if version_key(version) < _floor_key():
        pytest.skip(f"timm {version} is below the floor {_timm_compat.TIMM_FLOOR}: see the import test")
    if not (release / "train.py").is_file():
        pytest.skip(f"no train.py in {release} (its tag could not be fetched at install time)")
    data = fake_imagefolder(tmp_path / "data")
    command = [
        sys.executable, "train.py", str(data), "--model", "resnet18", "--num-classes", "2",
        "--img-size", "32", "-b", "4", "--epochs", "1", "--sched", "step", "--warmup-epochs", "0",
        "--workers", "1",
        "--device", "cpu", "--mixup", "1.0", "--mixup-mode", "sage", "--log-interval", "1",
        "--output", str(tmp_path / "out"), "--device-modules", "timm_sage.plugin", "sage_probe",
    ]  # fmt: skip
    report = run_train_py_with_probe(release, command, tmp_path)
    # The release's own timm, from its source tree, ran the plugin.
    assert report["timm_version"] == version
    assert Path(report["timm_file"]).resolve().is_relative_to(release.resolve())
    # Two training batches, each SAGE-mixed from the bound model.
    assert report["calls"] == 2 and report["methods"] == ["sage"] and report["mixed"] == [True]
    assert report["bound"] == [True]


@pytest.mark.parametrize("release", releases(), ids=lambda p: p.name)
def test_a_release_below_the_floor_fails_on_import_naming_version_path_and_floor(
    release: Path, tmp_path: Path
) -> None:
    version = release_version(release)
    # The plugin's import (train.py --device-modules timm_sage.plugin) and the first use of a public name;
    # a bare `import timm_sage` is light and imports no timm.
    for code in ("import timm_sage.plugin", "from timm_sage import SageMixup"):
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=release, env=train_env(tmp_path), capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        if version_key(version) >= _floor_key():
            assert run.returncode == 0, run.stderr[-3000:]
            continue
        assert run.returncode != 0
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: timm_sage needs timm " + _timm_compat.TIMM_FLOOR), last
        assert f"timm {version} at {release.resolve() / 'timm' / '__init__.py'}" in last, last
