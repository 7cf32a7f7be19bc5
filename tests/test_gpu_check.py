"""The GPU check's dry run: ``.ci/gpu_check.sh --device cpu`` runs every stage at tiny sizes, so the script
and its Python cannot rot between the (rare) machines with a GPU. CI runs it with the rest of the suite,
with albumentations hidden (as on a GPU box's own environment, which may lack the extra): the dry run's
pytest stage collects the same selection as the CUDA run (``-m cuda`` over the whole tests folder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / ".ci" / "gpu_check.sh"


def _hidden(tmp_path: Path, *modules: str) -> str:
    """A folder that, first on PYTHONPATH, makes ``modules`` unimportable (ModuleNotFoundError)."""
    folder = tmp_path / "hidden"
    for name in modules:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError('{name} is hidden by the test', name='{name}')\n"
        )
    return str(folder)


def _env(tmp_path: Path, *hidden: str, **extra: str) -> dict[str, str]:
    paths = [_hidden(tmp_path, *hidden)] if hidden else []
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([*paths, str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    env.pop("TIMM_TRAIN_PY", None) if "TIMM_TRAIN_PY" not in extra else None
    return env


def _cuda_marked_files() -> set[str]:
    """The test files with a test marked ``cuda`` (read from the source, independently of pytest)."""
    return {
        path.name
        for path in (ROOT / "tests").glob("test_*.py")
        if re.search(r"pytest\.mark\.cuda|mark\.cuda\b|= pytest\.mark\.cuda", path.read_text())
    }


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_dry_run_on_cpu_runs_every_stage_with_albumentations_hidden(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", str(out)], env=_env(tmp_path, "albumentations"),
        capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    stages = (out / "stages.txt").read_text().splitlines()
    assert [line.split()[:2] for line in stages] == [
        ["cuda_tests", "ok"], ["sync_step", "ok"], ["train_py", "ok"], ["bench", "ok"], ["compile", "ok"],
    ]  # fmt: skip
    # The preflight found every required module, and reported the hidden extra as optional.
    preflight = json.loads((out / "preflight.json").read_text())
    assert preflight["ok"] and preflight["missing"] == []
    assert [entry.split()[0] for entry in preflight["optional_missing"]] == ["albumentations"]
    # One JSON with every stage, as written after the last one.
    summary = json.loads((out / "gpu_check.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        (name, "ok") for name in ("cuda_tests", "sync_step", "train_py", "bench", "compile")
    ]
    assert sum(s["limit"] for s in summary["stages"]) <= 540  # fits one 10-minute command with the preflight
    # The pytest stage collected the CUDA tests of every file that has one (not one file), and the
    # albumentations tests were skipped, not a collection error.
    suite = ET.parse(out / "cuda_tests.xml").getroot()
    names = {case.get("classname") for case in suite.iter("testcase")} - {""}  # "": a module-level skip
    files = {name.split(".")[1] + ".py" for name in names}
    assert files == _cuda_marked_files() and len(files) >= 3, files
    log = (out / "cuda_tests.txt").read_text()
    assert "error" not in log.lower().split("short test summary")[0].replace("errors=0", "")
    assert "could not import 'albumentations'" in log
    compiled = json.loads((out / "bench_compile_cpu.json").read_text())
    assert compiled["meta"]["finished"] == ["compile"] and len(compiled["rows"]) == 6
    sync = json.loads((out / "sync_step.json").read_text())["results"]
    assert len(sync) == 4 and all(result["ok"] for result in sync.values())
    train = json.loads((out / "train_py.json").read_text())
    assert train["script"] == "tests/timm_train_like.py" and train["mixed_steps"] > 0
    bench = json.loads((out / "bench_cpu.json").read_text())
    assert bench["meta"]["finished"] == ["mix", "step"] and bench["meta"]["failed"] == {}
    assert {row["suite"] for row in bench["rows"]} == {"mix", "step"}
    assert "<!-- bench-mix-step:begin -->" in (out / "benchmarks.md").read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_preflight_stops_at_once_listing_everything_missing(tmp_path):
    """A required module missing and a train.py that does not exist: one preflight, both listed, no stage
    run, nothing installed."""
    out = tmp_path / "out"
    env = _env(tmp_path, "hypothesis", TIMM_TRAIN_PY=str(tmp_path / "no_such_train.py"))
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", str(out)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert completed.returncode == 100, completed.stdout[-3000:] + completed.stderr[-3000:]
    preflight = json.loads((out / "preflight.json").read_text())
    assert not preflight["ok"]
    missing = [entry.split()[0] for entry in preflight["missing"]]
    assert missing == ["hypothesis", f"TIMM_TRAIN_PY={tmp_path / 'no_such_train.py'}"], preflight["missing"]
    assert preflight["seconds"] < 60
    assert "pip" not in completed.stdout + completed.stderr
    assert (out / "stages.txt").read_text().splitlines() == [
        f"preflight FAILED: see {out}/preflight.json; nothing else ran"
    ]
    assert json.loads((out / "gpu_check.json").read_text())["stages"][0]["stage"] == "preflight"


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_reports_a_failed_stage_and_goes_on(tmp_path):
    """A stage that fails (here: a train.py that exits 1) is named in the summary and in the JSON; the
    stages after it run."""
    out = tmp_path / "out"
    broken = tmp_path / "train.py"
    broken.write_text("import sys\nprint('broken train.py')\nsys.exit(1)\n")
    env = _env(tmp_path, TIMM_TRAIN_PY=str(broken), GPU_CHECK_STAGES="train_py bench")
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", str(out)], env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert completed.returncode == 1  # one failed stage
    stages = [line.split()[:2] for line in (out / "stages.txt").read_text().splitlines()]
    assert stages == [["train_py", "FAILED"], ["bench", "ok"]]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [("train_py", "FAILED"), ("bench", "ok")]
    assert "broken train.py" in (out / "train_py.txt").read_text()
    assert json.loads((out / "bench_cpu.json").read_text())["rows"]
    assert "train_py FAILED" in completed.stdout
