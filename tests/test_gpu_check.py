"""The GPU check's dry run: ``.ci/gpu_check.sh --device cpu`` runs every stage at tiny sizes, so the script
and its Python cannot rot between the (rare) machines with a GPU. CI runs it with the rest of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / ".ci" / "gpu_check.sh"


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_dry_run_on_cpu_runs_every_stage(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("TIMM_TRAIN_PY", None)  # the harness, not a clone's train.py
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    stages = (tmp_path / "stages.txt").read_text().splitlines()
    assert [line.split()[:2] for line in stages] == [
        ["cuda_tests", "ok"], ["sync_step", "ok"], ["train_py", "ok"], ["bench", "ok"], ["compile", "ok"],
    ]  # fmt: skip
    compiled = json.loads((tmp_path / "bench_compile_cpu.json").read_text())
    assert compiled["meta"]["finished"] == ["compile"] and len(compiled["rows"]) == 6
    sync = json.loads((tmp_path / "sync_step.json").read_text())["results"]
    assert len(sync) == 4 and all(result["ok"] for result in sync.values())
    train = json.loads((tmp_path / "train_py.json").read_text())
    assert train["script"] == "tests/timm_train_like.py" and train["mixed_steps"] > 0
    bench = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert bench["meta"]["finished"] == ["mix", "step"] and bench["meta"]["failed"] == {}
    assert {row["suite"] for row in bench["rows"]} == {"mix", "step"}
    assert "<!-- bench-mix-step:begin -->" in (tmp_path / "benchmarks.md").read_text()


def test_gpu_check_reports_a_failed_stage_and_goes_on(tmp_path):
    """A stage that fails (here: train.py missing) is named in the summary; the stages after it run."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TIMM_TRAIN_PY": str(tmp_path / "no_such_train.py"),
        "GPU_CHECK_STAGES": "train_py bench",
    }
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert completed.returncode == 1  # one failed stage
    stages = [line.split()[:2] for line in (tmp_path / "stages.txt").read_text().splitlines()]
    assert stages == [["train_py", "FAILED"], ["bench", "ok"]]
    assert json.loads((tmp_path / "bench_cpu.json").read_text())["rows"]
    assert "train_py FAILED" in completed.stdout
