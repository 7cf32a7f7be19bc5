"""The study report: mean and spread over seeds, the figure, and the markers in a Markdown file."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from timm_sage.tools import study


def _fake_run(root, config_stem, seed, curve, epoch_time=1.0, train_top1=None):
    """A finished run; ``curve`` holds test top-1 per epoch, None where the epoch was not evaluated."""
    folder = root / f"{config_stem}-seed{seed}"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"epoch": i + 1, "test_top1": v, "epoch_time": epoch_time}) + "\n"
            for i, v in enumerate(curve)
        )
    )
    tested = [v for v in curve if v is not None]
    summary = {"final_top1": curve[-1], "best_top1": max(tested), "final_train_top1": train_top1}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_report_table_figure_and_markers(tmp_path):
    folders = [
        _fake_run(tmp_path, "fmnist_study_sage", 0, [80.0, 85.0, 88.0]),
        _fake_run(tmp_path, "fmnist_study_sage", 1, [81.0, 86.0, 87.0]),
        _fake_run(tmp_path, "fmnist_study_vanilla", 0, [82.0, 84.0, 83.5]),
        tmp_path / "fmnist_study_mixup-seed0",  # not finished: left out
    ]
    results = study.collect(folders)
    assert set(results) == {"sage", "vanilla"}
    text = study.table(results)
    sage_row = next(line for line in text.splitlines() if line.startswith("| sage "))
    cells = [c.strip() for c in sage_row.strip("|").split("|")]
    assert cells[1] == "2" and cells[2] == "87.50"
    assert cells[3] == f"{statistics.stdev([88.0, 87.0]):.2f}" and cells[4] == "87.50"
    report = tmp_path / "results.md"
    report.write_text("# Results\n\nbefore\n\n<!-- study:begin -->\nold\n<!-- study:end -->\n\nafter\n")
    study.write_between_markers(report, text, study.SECTION)
    written = report.read_text()
    assert "old" not in written and "before" in written and "after" in written and sage_row in written
    study.plot_curves(results, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_override_flags_and_bad_assignment():
    assert study.override_flags(["data_dir=/data/c", "epochs=5"]) == [
        "--data_dir",
        "/data/c",
        "--epochs",
        "5",
    ]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        study.override_flags(["epochs"])


def test_method_names_strip_the_shared_prefix():
    names = study.method_names(["fm_scarce_sage", "fm_scarce_sage_cheap", "fm_scarce_vanilla"])
    assert names == {
        "fm_scarce_sage": "sage",
        "fm_scarce_sage_cheap": "sage_cheap",
        "fm_scarce_vanilla": "vanilla",
    }
    assert study.method_names(["fm_study_sage"]) == {"fm_study_sage": "sage"}


def test_equal_epoch_table_reports_train_top1_and_gap(tmp_path):
    folders = [
        _fake_run(tmp_path, "s_vanilla", 0, [None, 80.0, None, 84.0], train_top1=99.5),
        _fake_run(tmp_path, "s_vanilla", 1, [None, 81.0, None, 86.0], train_top1=99.9),
    ]
    row = next(line for line in study.table(study.collect(folders)).splitlines() if "| vanilla " in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # final 85.00 mean; train 99.70 mean; gap = mean(99.5 - 84, 99.9 - 86) = 14.70; 4 epochs x 1 s.
    assert cells[2] == "85.00" and cells[5] == "99.70" and cells[6] == "14.70" and cells[7] == "4"


def test_budget_table_reads_each_method_at_the_reference_training_time(tmp_path):
    # vanilla: 4 epochs of 1 s -> budget 4 s. sage costs 2 s per epoch: within 4 s it reaches epoch 2.
    folders = [
        _fake_run(tmp_path, "s_vanilla", 0, [70.0, 80.0, 82.0, 84.0]),
        _fake_run(tmp_path, "s_sage", 0, [60.0, 75.0, 85.0, 88.0], epoch_time=2.0),
        _fake_run(tmp_path, "s_sage", 1, [61.0, 77.0, 85.0, 88.0], epoch_time=2.0),
    ]
    results = study.collect(folders)
    assert study.top1_within(results["sage"][0], 4.0) == (75.0, 2)
    text = study.budget_table(results, "vanilla")
    sage_row = next(line for line in text.splitlines() if line.startswith("| sage "))
    cells = [c.strip() for c in sage_row.strip("|").split("|")]
    assert cells[1] == "2.00x" and cells[2] == "2" and cells[3] == "76.00"
    assert cells[4] == f"{statistics.stdev([75.0, 77.0]):.2f}"
    vanilla_row = next(line for line in text.splitlines() if line.startswith("| vanilla "))
    assert "| 84.00 |" in vanilla_row
    with pytest.raises(ValueError, match="budget reference"):
        study.budget_table(results, "mixup")


def test_training_seconds_use_the_median_epoch_time(tmp_path):
    """One epoch slowed by other load on the machine does not move the wall-clock axis."""
    folder = _fake_run(tmp_path, "s_vanilla", 0, [70.0, 80.0, 82.0, 84.0])
    lines = folder.joinpath("metrics.jsonl").read_text().splitlines()
    slow = json.loads(lines[1]) | {"epoch_time": 30.0}
    folder.joinpath("metrics.jsonl").write_text("\n".join([lines[0], json.dumps(slow), *lines[2:]]) + "\n")
    (run,) = study.collect([folder])["vanilla"]
    assert run["train_s"] == 4.0 and [p[1] for p in run["points"]] == [1.0, 2.0, 3.0, 4.0]


def test_measured_epoch_seconds_replace_the_runs_own_timing(tmp_path):
    folders = [
        _fake_run(tmp_path, "s_vanilla", 0, [70.0, 80.0], epoch_time=9.0),  # slowed by other load
        _fake_run(tmp_path, "s_sage", 0, [60.0, 75.0], epoch_time=2.0),
    ]
    results = study.collect(folders, {"s_vanilla": 1.0, "s_sage": 2.0})
    assert results["vanilla"][0]["train_s"] == 2.0 and results["sage"][0]["train_s"] == 4.0
    assert "| sage | 2.00x |" in study.budget_table(results, "vanilla")


def test_time_epochs_runs_each_config_briefly(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, check, stdout):
        calls.append(command)
        folder = Path(command[command.index("--output") + 1]) / command[command.index("--experiment") + 1]
        folder.mkdir(parents=True)
        # the first pass finds the machine slow, the second (reverse order) fast
        slow = sum(1 for c in calls if c[c.index("--experiment") + 1] == folder.name) == 1
        times = ([5.0, 1.0, 1.5] if "a" in folder.name else [5.0, 2.0, 2.0]) if slow else [5.0, 0.5, 0.5]
        lines = [json.dumps({"epoch": i + 1, "epoch_time": t}) for i, t in enumerate(times)]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    configs = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    seconds = study.time_epochs(configs, 3, tmp_path / "out", [])
    # each config's median over both passes, warm-up epochs left out: a [1.0, 1.5, 0.5, 0.5], b [2, 2, .5, .5]
    assert seconds == {"a": 0.75, "b": 1.25}
    names = [c[c.index("--experiment") + 1] for c in calls]
    assert names == ["a", "b", "b", "a"]  # in order, then in reverse order
    assert all("--epochs" in c and c[c.index("--epochs") + 1] == "3" for c in calls)
    with pytest.raises(ValueError, match="time-epochs"):
        study.time_epochs(configs, 1, tmp_path / "out", [])
