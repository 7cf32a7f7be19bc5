"""A new ``timm-sage train`` run never overwrites an earlier one (issue 34): NAME, NAME-1, NAME-2, ..."""

from __future__ import annotations

import json

import yaml
from test_data import make_image_folder

from timm_sage.tools import cli
from timm_sage.train.outputs import fresh_run_folder


def test_fresh_run_folder_skips_folders_that_hold_something(tmp_path):
    base = tmp_path / "runs" / "job"
    assert fresh_run_folder(base) == base and base.is_dir()  # created, parents too
    assert fresh_run_folder(base) == base  # still empty: free
    (base / "args.yaml").write_text("x")
    assert fresh_run_folder(base) == tmp_path / "runs" / "job-1"
    (tmp_path / "runs" / "job-1" / "summary.json").write_text("{}")
    (tmp_path / "runs" / "job-2").mkdir()
    (tmp_path / "runs" / "job-2" / "x").write_text("x")
    assert fresh_run_folder(base) == tmp_path / "runs" / "job-3"
    assert (base / "args.yaml").read_text() == "x"  # nothing earlier touched


def test_training_twice_with_the_same_experiment_keeps_both_runs(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=12, test_per_class=2)
    config = {
        "data_dir": str(data), "model": "preactresnet18_tiny", "model_kwargs": {"width": 0.0625},
        "epochs": 1, "batch_size": 6, "opt": "sgd", "lr": 0.05, "sched": "cosine", "mixup": 1.0,
        "mixup_mode": "sage", "seed": 1, "workers": 0, "output": str(tmp_path / "out"), "experiment": "job",
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    first, second = tmp_path / "out" / "job", tmp_path / "out" / "job-1"
    assert cli.main(["train", "--config", str(path), "--no-progress"]) == 0
    summary = (first / "summary.json").read_text()
    checkpoint = (first / "last.pth.tar").read_bytes()
    assert cli.main(["train", "--config", str(path), "--no-progress", "--seed", "2"]) == 0
    assert (first / "summary.json").read_text() == summary  # the first run is untouched
    assert (first / "last.pth.tar").read_bytes() == checkpoint
    assert json.loads((second / "summary.json").read_text())["output_dir"] == str(second)
    assert yaml.safe_load((second / "args.yaml").read_text())["seed"] == 2
    assert yaml.safe_load((first / "args.yaml").read_text())["seed"] == 1
    # --resume continues a run in its own folder, making no new one
    assert cli.main(["train", "--resume", str(first), "--epochs", "2", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["job", "job-1"]
    assert json.loads((first / "summary.json").read_text())["epochs"] == 2
