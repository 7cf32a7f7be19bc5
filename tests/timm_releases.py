"""Helpers of the tests that run timm's own train.py (tests/test_timm_releases.py, test_timm_recipes.py):
the releases laid out by ``.ci/timm_releases.sh`` in the folder ``TIMM_SAGE_TIMM_RELEASES`` names (one
folder per release: its ``timm`` package and its ``train.py``), a fake ImageFolder, and a probe module
that train.py imports after the plugin (``--device-modules timm_sage.plugin sage_probe``) to record, at
exit, what the plugin's mixers did and which timm the run imported."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

import timm_sage

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


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def releases() -> list[Path]:
    if not RELEASES or not Path(RELEASES).is_dir():
        return []
    return sorted(
        (p for p in Path(RELEASES).iterdir() if (p / "timm" / "__init__.py").is_file()),
        key=lambda p: version_key(p.name),
    )


def release_version(release: Path) -> str:
    text = (release / "timm" / "version.py").read_text()
    return re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text).group(1)


def fake_imagefolder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(4):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def train_env(tmp_path: Path) -> dict[str, str]:
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


def newest_release_with_train_py(floor: str) -> Path | None:
    """The newest laid-out release at or above ``floor`` that has its train.py, or None."""
    usable = [
        release
        for release in releases()
        if (release / "train.py").is_file() and version_key(release_version(release)) >= version_key(floor)
    ]
    return usable[-1] if usable else None


def run_train_py_with_probe(release: Path, command: list[str], tmp_path: Path) -> dict:
    """Run ``command`` (a train.py command line ending in the ``sage_probe`` device module) from inside
    ``release``'s source tree; check that it ran and that the plugin installed itself; return the probe's
    report (probe.json: calls, methods, mixed, bound, timm_version, timm_file)."""
    run = subprocess.run(
        command, cwd=release, env=train_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "timm_sage.plugin: installed for --mixup-mode sage" in output
    return json.loads((tmp_path / "probe.json").read_text())

