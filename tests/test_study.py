"""The study report: mean and spread over seeds, the figure, and the markers in a Markdown file."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

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


def test_time_epochs_takes_the_configs_in_turn_step_by_step(tmp_path, monkeypatch):
    import time

    import timm_sage.train.session as session

    clock = {"now": 0.0}
    calls = []

    class FakeLoader:
        def __init__(self, steps):
            self.steps = steps

        def __len__(self):
            return self.steps

        def batches(self, epoch):
            for index in range(self.steps):
                yield (epoch, index), None

    class FakeTrainer:
        def __init__(self, cfg, progress):
            self.name = cfg.experiment
            self.model = torch.nn.Linear(1, 1)
            self.train_loader = FakeLoader({"a": 3, "b": 5}[self.name])
            assert not progress

        def train_one_step(self, x, y):
            calls.append((self.name, x))
            # a machine that slows down as the pass goes on: +0.1 s per step trained so far
            clock["now"] += {"a": 1.0, "b": 2.0}[self.name] + 0.1 * len(calls)

    monkeypatch.setattr(session, "Trainer", FakeTrainer)
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])
    configs = []
    for name in ("a", "b"):
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text("epochs: 2\n")
    seconds = study.time_epochs(configs, 3, tmp_path / "out", [])
    # two warm-up rounds (a b, b a), then a b, b a, a b: calls 5..10; a's steps are calls 5, 8, 9
    order = [name for name, _ in calls]
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    # a walks through its epoch's batches and on into the next epoch (3 batches per epoch)
    assert [x for name, x in calls if name == "a"] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    # median step: a (1.5, 1.8, 1.9) -> 1.8 x 3 steps per epoch; b (2.6, 2.7, 3.0) -> 2.7 x 5
    assert seconds["a"] == pytest.approx(1.8 * 3) and seconds["b"] == pytest.approx(2.7 * 5)
    with pytest.raises(ValueError, match="time-steps"):
        study.time_epochs(configs, 2, tmp_path / "out", [])


def _fake_val_run(root, stem, seed, val, test, epochs=4, epoch_time=1.0, train=None):
    folder = root / f"{stem}-seed{seed}"
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, "val_top1": val - epochs + i + 1, "test_top1": None, "epoch_time": epoch_time}
            for i in range(epochs)]  # fmt: skip
    rows[-1]["test_top1"] = test
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"final_top1": test, "best_top1": test, "final_val_top1": val, "final_train_top1": train}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_choice_among_sage_settings_is_made_on_validation_not_test(tmp_path):
    folders = [
        _fake_val_run(tmp_path, "s_cutmix", 0, val=70.0, test=71.0),
        _fake_val_run(tmp_path, "s_sage", 0, val=72.0, test=60.0),  # best on val, poor on test
        _fake_val_run(tmp_path, "s_sage_random", 0, val=69.0, test=80.0),  # best on test: not chosen
    ]
    results = study.collect(folders, metric="val")
    assert [p[2] for p in results["sage"][0]["points"]] == [69.0, 70.0, 71.0, 72.0]  # the val curve
    text = study.selection(results)
    assert "**sage** (val 72.00)" in text and "test top-1 60.00" in text and "cutmix (val 70.00" in text
    row = next(line for line in study.table(results).splitlines() if line.startswith("| sage_random "))
    assert "| 69.00 |" in row and "| 80.00 |" in row  # val and test columns side by side
    assert study.selection(study.collect([_fake_run(tmp_path, "t_sage", 0, [1.0, 2.0])])) == ""


def test_budget_epochs_fit_each_schedule_into_the_reference_time():
    seconds = {"vanilla": 2.0, "mixup": 2.05, "sage": 4.1, "cheap": 2.5}
    # 40 epochs x 2 s = 80 s: sage floor(80 / 4.1) = 19, cheap 32; mixup within 5 % keeps its schedule
    assert study.budget_epochs(seconds, "vanilla", 40) == {"sage": 19, "cheap": 32}
    with pytest.raises(ValueError, match="budget reference"):
        study.budget_epochs(seconds, "cutmix", 40)


def test_equal_time_trains_shortened_schedules_once_and_reports_them(tmp_path, monkeypatch):
    configs = []
    for name, epochs in (("s_vanilla", 4), ("s_sage", 4)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"epochs: {epochs}\n")
        configs.append(path)
    out = tmp_path / "out"
    _fake_val_run(out, "s_vanilla", 0, val=70.0, test=71.0, epoch_time=1.0)
    _fake_val_run(out, "s_sage", 0, val=75.0, test=76.0, epoch_time=2.0)
    calls = []

    def fake_run(command, check):
        calls.append(command)
        epochs = int(command[command.index("--epochs") + 1])
        folder = Path(command[command.index("--output") + 1])
        _fake_val_run(folder, command[command.index("--experiment") + 1].rsplit("-seed", 1)[0], 0,
                      val=73.0, test=72.5, epochs=epochs, epoch_time=2.0, train=88.25)  # fmt: skip

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    parser = __import__("argparse").ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args([*map(str, configs), "--seeds", "0", "--output", str(out), "--select-on", "val",
                              "--equal-time", "--report", str(tmp_path / "r.md")])  # fmt: skip
    (tmp_path / "r.md").write_text("<!-- study:begin -->\n<!-- study:end -->\n")
    assert study.run(args) == 0
    # only sage is shortened: 4 epochs x 1 s of vanilla / 2 s per sage epoch = 2 epochs
    assert len(calls) == 1 and calls[0][calls[0].index("--epochs") + 1] == "2"
    plan = json.loads((out / "budget" / "plan.json").read_text())
    assert plan["epochs"] == {"s_sage": 2} and plan["seconds"] == {"s_vanilla": 1.0, "s_sage": 2.0}
    report = (tmp_path / "r.md").read_text()
    # cost, epochs trained, runs, val, test, std (n/a with one seed), final train top-1 of the shortened run
    sage_row = next(line for line in report.splitlines() if line.startswith("| sage | 2.00x | 2 | 1 |"))
    assert "| 73.00 | 72.50 | 0.00 | 88.25 |" in sage_row
    vanilla_row = next(line for line in report.splitlines() if line.startswith("| vanilla | 1.00x | 4 | 1 |"))
    assert vanilla_row.split(" | ")[7] == "n/a"  # its run did not measure the train top-1
    assert study.run(args) == 0 and len(calls) == 1  # finished runs are not trained again


def test_a_config_added_to_a_planned_study_is_timed_beside_the_reference_and_planned_alone(
    tmp_path, monkeypatch
):
    configs = {}
    for name in ("s_vanilla", "s_sage", "s_cheap"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text("epochs: 4\n")
    out = tmp_path / "out"
    for stem in configs:
        _fake_val_run(out, stem, 0, val=70.0, test=71.0)
    (out / "_timing").mkdir()
    (out / "_timing" / "epoch_seconds.json").write_text(json.dumps({"s_vanilla": 1.0, "s_sage": 2.0}))
    plan = {"timed": True, "reference": "s_vanilla", "reference_epochs": 4,
            "seconds": {"s_vanilla": 1.0, "s_sage": 2.0}, "epochs": {"s_sage": 2}}  # fmt: skip
    (out / "budget").mkdir()
    (out / "budget" / "plan.json").write_text(json.dumps(plan))
    _fake_val_run(out / "budget", "s_sage", 0, val=60.0, test=61.0, epochs=2)
    timed, trained = [], []

    def fake_time_epochs(paths, rounds, output, extra):
        timed.append([path.stem for path in paths])
        # the machine is twice as fast now as when the study was timed: only the ratio may count
        return {"s_vanilla": 0.5, "s_cheap": 0.75}

    def fake_run(command, check):
        trained.append(command)
        folder = Path(command[command.index("--output") + 1])
        stem = command[command.index("--experiment") + 1].rsplit("-seed", 1)[0]
        epochs = int(command[command.index("--epochs") + 1])
        _fake_val_run(folder, stem, 0, val=65.0, test=66.0, epochs=epochs)

    monkeypatch.setattr(study, "time_epochs", fake_time_epochs)
    monkeypatch.setattr(study.subprocess, "run", fake_run)
    parser = __import__("argparse").ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args([*map(str, configs.values()), "--seeds", "0", "--output", str(out),
                              "--select-on", "val", "--equal-time", "--time-steps", "3"])  # fmt: skip
    assert study.run(args) == 0
    assert timed == [["s_vanilla", "s_cheap"]]  # the new config beside the reference, nothing else
    seconds = json.loads((out / "_timing" / "epoch_seconds.json").read_text())
    assert seconds == {"s_vanilla": 1.0, "s_sage": 2.0, "s_cheap": pytest.approx(1.5)}  # 0.75 x 1.0 / 0.5
    plan = json.loads((out / "budget" / "plan.json").read_text())
    assert plan["epochs"] == {"s_sage": 2, "s_cheap": 2}  # floor(4 x 1.0 / 1.5); s_sage's plan kept
    assert plan["seconds"]["s_vanilla"] == 1.0 and plan["seconds"]["s_sage"] == 2.0
    assert len(trained) == 1 and "s_cheap-seed0" in trained[0]  # s_sage's shortened run is not redone
    assert study.run(args) == 0 and len(timed) == 1 and len(trained) == 1  # all kept on the next call


def test_paired_difference_matches_a_hand_computed_t_interval():
    anchor = [{"seed": s, "final_top1": v} for s, v in ((0, 80.0), (1, 82.0), (2, 84.0), (3, 90.0))]
    rival = [{"seed": s, "final_top1": v} for s, v in ((0, 79.0), (1, 80.0), (2, 84.0))]  # no seed 3
    diff = study.paired_difference(anchor, rival)
    # differences 1, 2, 0: mean 1, sd 1, n 3, t(0.975, 2) = 4.303 -> half-width 4.303 / sqrt(3) = 2.4843
    assert diff["seeds"] == [0, 1, 2] and diff["diffs"] == [1.0, 2.0, 0.0]
    assert diff["mean"] == pytest.approx(1.0)
    assert diff["low"] == pytest.approx(1 - 2.48434, abs=1e-4) and diff["high"] == pytest.approx(
        3.48434, abs=1e-4
    )
    assert study.paired_difference(anchor, rival[:1]) is None  # one shared seed: no interval
    assert study.t_quantile_975(4) == 2.776 and study.t_quantile_975(1000) == 1.96
    with pytest.raises(ValueError, match="dof"):
        study.t_quantile_975(0)


def test_paired_table_says_which_rivals_lie_beyond_the_interval(tmp_path):
    folders = []
    for seed, (a, b, c) in enumerate(((70.0, 60.0, 69.0), (71.0, 61.0, 72.0), (72.0, 62.5, 70.0))):
        folders += [
            _fake_val_run(tmp_path, "s_sage", seed, val=a, test=a),
            _fake_val_run(tmp_path, "s_cutmix", seed, val=b, test=b),
            _fake_val_run(tmp_path, "s_vanilla", seed, val=c, test=c),
        ]
    text = study.paired_table(study.collect(folders, metric="val"), "sage")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert set(rows) == {"cutmix", "vanilla"}
    assert "| better |" in rows["cutmix"] and "0: +10.00, 1: +10.00, 2: +9.50" in rows["cutmix"]
    assert "| no |" in rows["vanilla"]  # +1, -1, +2: the interval spans zero
    assert study.paired_table(study.collect(folders, metric="val"), "mixup") == ""


def test_extended_epochs_give_the_cheaper_methods_the_costlier_ones_time():
    seconds = {"vanilla": 2.0, "cutmix": 2.05, "sage": 4.1, "sage_cheap": 4.0}
    # 40 epochs x 4.1 s = 164 s: vanilla floor(164 / 2) = 82, cutmix 80; sage_cheap within 5 %: left out
    assert study.extended_epochs(seconds, "sage", 40, ["vanilla", "cutmix", "sage_cheap"]) == {
        "vanilla": 82, "cutmix": 80,
    }  # fmt: skip
    with pytest.raises(ValueError, match="--extend-to"):
        study.extended_epochs(seconds, "mixup", 40, ["vanilla"])


def test_extend_to_trains_longer_baselines_once_and_reports_them_paired(tmp_path, monkeypatch):
    configs = []
    for name in ("s_vanilla", "s_sage"):
        path = tmp_path / f"{name}.yaml"
        path.write_text("epochs: 4\n")
        configs.append(path)
    out = tmp_path / "out"
    for seed in (0, 1):
        _fake_val_run(out, "s_vanilla", seed, val=70.0 + seed, test=71.0 + seed, epoch_time=1.0)
        _fake_val_run(out, "s_sage", seed, val=75.0, test=76.0 + 2 * seed, epoch_time=2.0)
    calls = []

    def fake_run(command, check):
        calls.append(command)
        epochs = int(command[command.index("--epochs") + 1])
        seed = int(command[command.index("--seed") + 1])
        folder = Path(command[command.index("--output") + 1])
        _fake_val_run(folder, command[command.index("--experiment") + 1].rsplit("-seed", 1)[0], seed,
                      val=73.0, test=72.0 + seed, epochs=epochs, epoch_time=1.0)  # fmt: skip

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    parser = __import__("argparse").ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args([*map(str, configs), "--seeds", "0", "1", "--output", str(out), "--select-on",
                              "val", "--extend-to", "sage", "--paired", "sage"])  # fmt: skip
    assert study.run(args) == 0
    # vanilla gets sage's 4 epochs x 2 s = 8 s: 8 epochs of its own schedule, for each seed, under extended/
    assert len(calls) == 2 and all(c[c.index("--epochs") + 1] == "8" for c in calls)
    assert all("extended" in c[c.index("--output") + 1] for c in calls)
    plan = json.loads((out / "extended" / "plan.json").read_text())
    assert plan["epochs"] == {"s_vanilla": 8} and plan["target"] == "s_sage"
    report = study.run(args)  # finished: nothing trained again
    assert report == 0 and len(calls) == 2


def test_cost_figure_draws_every_schedule_of_a_method_at_its_training_seconds(tmp_path):
    seeds = (0, 1)
    folders = [_fake_val_run(tmp_path / "a", "s_vanilla", s, val=60.0 + s, test=50.0 + s) for s in seeds]
    folders += [_fake_val_run(tmp_path / "a", "s_sage", s, val=64.0, test=55.0 + 2 * s, epoch_time=2.0)
                for s in seeds]  # fmt: skip
    longer = [_fake_val_run(tmp_path / "b", "s_vanilla", s, val=62.0, test=53.0 + s, epochs=8) for s in seeds]
    results = study.collect(folders, metric="val")
    extended = study.collect(longer, metric="val")
    figure = tmp_path / "cost.png"
    schedules = {m: [runs, extended.get(m, [])] for m, runs in results.items()}
    drawn = study.plot_cost_accuracy(schedules, figure, "t")
    # (seconds, epochs, val mean, test mean), in order of cost: vanilla 4 x 1 s then 8 x 1 s; sage 4 x 2 s
    assert drawn == {"vanilla": [(4.0, 4, 60.5, 50.5), (8.0, 8, 62.0, 53.5)], "sage": [(8.0, 4, 64.0, 56.0)]}
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_claimed_by_a_live_process_is_skipped_and_a_stale_claim_taken_over(tmp_path, monkeypatch):
    config = tmp_path / "s_vanilla.yaml"
    config.write_text("epochs: 1\n")
    out = tmp_path / "out"
    out.mkdir()
    busy, stale = out / ".s_vanilla-seed0.lock", out / ".s_vanilla-seed1.lock"
    busy.write_text(str(__import__("os").getppid()))  # a live process, not us
    stale.write_text("999999999")  # no such process
    trained = []

    def fake_run(command, check):
        trained.append(command[command.index("--experiment") + 1])
        assert (out / f".{trained[-1]}.lock").read_text() == str(__import__("os").getpid())

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    study.run_study([config], [0, 1], out, [])
    assert trained == ["s_vanilla-seed1"]
    assert busy.is_file() and not stale.exists()  # ours is removed when the run ends


def test_a_study_resumes_elsewhere_from_its_record(tmp_path, monkeypatch):
    config = tmp_path / "s_vanilla.yaml"
    config.write_text("epochs: 2\n")
    trained = []

    def fake_run(command, check):
        trained.append(command)
        folder = Path(command[command.index("--output") + 1])
        seed = int(command[command.index("--seed") + 1])
        run = _fake_val_run(folder, "s_vanilla", seed, val=60.0 + seed, test=59.0, epochs=2)
        (run / "last.pth.tar").write_bytes(b"a checkpoint: not recorded")

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    parser = __import__("argparse").ArgumentParser()
    study.add_arguments(parser)
    record = tmp_path / "record"
    first = ["--seeds", "0", "1", "--select-on", "val", "--record", str(record)]
    assert study.run(parser.parse_args([str(config), "--output", str(tmp_path / "here"), *first])) == 0
    assert len(trained) == 2
    kept = sorted(p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file())
    assert kept == [f"s_vanilla-seed{s}/{name}" for s in (0, 1) for name in ("metrics.jsonl", "summary.json")]
    # another machine: an empty output folder, the record committed; seed 2 is new
    again = parser.parse_args([str(config), "--output", str(tmp_path / "there"), *first[:3], "2", *first[3:]])
    assert study.run(again) == 0
    assert len(trained) == 3 and "s_vanilla-seed2" in trained[-1]
    assert (tmp_path / "there" / "s_vanilla-seed0" / "summary.json").is_file()
    assert (record / "s_vanilla-seed2" / "summary.json").is_file()


def test_stalled_runs_are_flagged_from_their_training_loss():
    import math

    from timm_sage.tools import study

    chance = math.log(10)
    stalled = [{"epoch": e, "train_loss": chance * 0.99} for e in (1, 2, 3, 4)] + [
        {"epoch": 5, "train_loss": 1.5}
    ]
    learning = [
        {"epoch": 1, "train_loss": chance}, {"epoch": 2, "train_loss": 1.9}, {"epoch": 3, "train_loss": 1.6}
    ]  # fmt: skip
    assert study.takeoff_epoch(stalled, 10) == 5 and study.is_stalled(stalled, 10)
    assert study.takeoff_epoch(learning, 10) == 2 and not study.is_stalled(learning, 10)
    # exactly at the threshold is still chance; just below it is a takeoff
    edge = [{"epoch": e, "train_loss": 0.98 * chance} for e in (1, 2, 3)]
    assert study.is_stalled(edge, 10)
    assert not study.is_stalled([{"epoch": 1, "train_loss": 2.5}], 10)  # too short to judge
    assert study.is_diverged([{"epoch": 1, "train_loss": float("nan")}])
    runs = {"m": [{"seed": 0, "stalled": True, "diverged": False, "takeoff": 5},
                  {"seed": 1, "stalled": False, "diverged": False, "takeoff": 2}]}  # fmt: skip
    assert "| m | 2 | 1 (seeds 0) | 0 | 0: 5, 1: 2 |" in study.stall_table(runs)
    # the rows say which epochs mixed: counted per run, and a column in the stall table
    assert study.mixed_epochs([{"mixing": False}, {"mixing": True}, {"mixing": True}]) == 2
    assert study.mixed_epochs([{"mixing": None}]) is None and study.mixed_epochs([{}]) is None
    runs["m"][0] |= {"mixed_epochs": 3, "epochs": 7}
    runs["m"][1] |= {"epochs": 7}
    assert "| m | 2 | 1 (seeds 0) | 0 | 0: 5, 1: 2 | 0: 3/7, 1: n/a |" in study.stall_table(runs)


def test_frontier_epochs_fit_each_budget_on_hand_computed_numbers():
    seconds = {"v": 2.0, "c": 2.1, "s": 4.2, "x": 0.7}
    # reference v: 15 epochs x 2 s = 30 s; epochs = max(1, round(b x 30 / t)), halves rounded up
    assert study.frontier_epochs(seconds, "v", 15, [0.5, 1, 2, 4]) == {
        "0.5": {"v": 8, "c": 7, "s": 4, "x": 21},  # 7.5 -> 8, 7.14, 3.57, 21.43
        "1": {"v": 15, "c": 14, "s": 7, "x": 43},  # the reference's own schedule at 1x
        "2": {"v": 30, "c": 29, "s": 14, "x": 86},  # 28.57, 14.29, 85.71
        "4": {"v": 60, "c": 57, "s": 29, "x": 171},  # 57.14, 28.57, 171.43
    }
    assert study.frontier_epochs(seconds, "v", 15, [0.01])["0.01"]["s"] == 1  # 0.07 epochs: at least one
    with pytest.raises(ValueError, match="budget reference"):
        study.frontier_epochs(seconds, "cutmix", 15, [1])
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="--frontier"):
            study.frontier_epochs(seconds, "v", 15, [bad])


def test_holm_adjustment_matches_hand_computed_values():
    assert study.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # sorted 0.001 x 4, 0.03 x 3, 0.2 x 2, 0.5 x 1 = 0.004, 0.09, 0.4, 0.5 (already increasing)
    assert study.holm([0.001, 0.2, 0.03, 0.5]) == pytest.approx([0.004, 0.4, 0.09, 0.5])
    # capped at 1, and monotone: 0.3 x 3 = 0.9, 0.4 x 2 = 0.8 -> 0.9, 0.45 x 1 -> 0.9
    assert study.holm([0.4, 0.3, 0.45]) == pytest.approx([0.9, 0.9, 0.9])
    assert study.holm([0.6, 0.7]) == [1.0, 1.0] and study.holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        study.holm([0.1, 1.5])


def test_paired_test_matches_a_hand_computed_t_test():
    from scipy import stats

    anchor = [{"seed": s, "final_top1": v} for s, v in ((0, 80.0), (1, 82.0), (2, 84.0), (3, 90.0))]
    rival = [{"seed": s, "final_top1": v} for s, v in ((0, 79.0), (1, 80.0), (2, 84.0))]  # no seed 3
    test = study.paired_test(anchor, rival)
    # differences 1, 2, 0: mean 1, sd 1, n 3, t = 1 / (1 / sqrt 3) = sqrt 3 with 2 degrees of freedom, whose
    # CDF is 1/2 + t / (2 sqrt(2 + t^2)): p = 2 (1/2 - sqrt 3 / (2 sqrt 5)) = 1 - sqrt(3 / 5) = 0.225403
    assert test["seeds"] == [0, 1, 2] and test["mean"] == pytest.approx(1.0) and test["median"] == 1.0
    assert test["p"] == pytest.approx(1 - (3 / 5) ** 0.5, rel=1e-9)
    assert test["p"] == pytest.approx(stats.ttest_rel([80.0, 82.0, 84.0], [79.0, 80.0, 84.0]).pvalue)
    # t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt 3 = 2.484138
    assert test["low"] == pytest.approx(1 - 2.484138, abs=1e-5) and test["high"] == pytest.approx(3.484138)
    skewed = study.paired_test(
        [{"seed": s, "final_top1": v} for s, v in enumerate((3.0, 0.0, 0.0, 1.0))],
        [{"seed": s, "final_top1": 0.0} for s in range(4)],
    )
    assert skewed["mean"] == 1.0 and skewed["median"] == 0.5  # the median beside the mean
    # all differences equal: no spread, p at the limits of the test, never NaN
    same = [{"seed": s, "final_top1": 70.0} for s in range(3)]
    assert study.paired_test([r | {"final_top1": 72.0} for r in same], same)["p"] == 0.0
    assert study.paired_test(same, same)["p"] == 1.0
    assert study.paired_test(anchor, rival[:1]) is None


def _frontier_run(seed, test, val, epochs=2, seconds=10.0, stalled=False):
    return {"seed": seed, "final_top1": test, "final_val_top1": val, "epochs": epochs, "train_s": seconds,
            "stalled": stalled, "diverged": False, "takeoff": 1}  # fmt: skip


def _small_frontier():
    def runs(tests, vals, epochs, seconds, stalled=()):
        return [_frontier_run(s, t, v, epochs, seconds, s in stalled)
                for s, (t, v) in enumerate(zip(tests, vals, strict=True))]  # fmt: skip

    return {
        "0.5": {  # a is best on validation; a - b = 1, 2, 0; a - c = 2, 2, 2
            "a": runs([80.0, 81.0, 82.0], [90.0, 90.0, 90.0], 2, 10.0),
            "b": runs([79.0, 79.0, 82.0], [89.0, 89.0, 89.0], 1, 12.0, stalled=(2,)),
            "c": runs([78.0, 79.0, 80.0], [80.0, 80.0, 80.0], 4, 9.0),
        },
        "1": {  # b is best on validation; b - a = 3, 1, 2; b - c = 1, 2, 0
            "a": runs([82.0, 83.0, 84.0], [91.0, 91.0, 91.0], 4, 20.0),
            "b": runs([85.0, 84.0, 86.0], [93.0, 93.0, 93.0], 2, 24.0),
            "c": runs([84.0, 82.0, 86.0], [85.0, 85.0, 85.0], 8, 18.0),
        },
    }


def test_frontier_tables_on_a_small_fake_study():
    frontier = _small_frontier()
    table = study.frontier_table(frontier)
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # per budget: epochs, mean ± sample std (runs), median, mean training seconds
    assert cells[1:] == ["2", "81.00 ± 1.00 (3)", "81.00", "10", "4", "83.00 ± 1.00 (3)", "83.00", "20"]
    b_row = next(line for line in table.splitlines() if line.startswith("| b |"))
    assert "| 1 | 80.00 ± 1.73 (3) | 79.00 | 12 |" in b_row  # median 79 below the mean 80
    best = study.frontier_best_table(frontier)
    assert "| 0.5x | a | 3 | 90.00 | 81.00 ± 1.00 | 81.00 |" in best
    assert "| 1x | b | 3 | 93.00 | 85.00 ± 1.00 | 85.00 |" in best
    # the family: p = 1 - sqrt(3/5) = 0.225403 (a - b), 0 (a - c, no spread), b - a: t = 2 sqrt 3 with 2 dof,
    # p = 1 - sqrt(12 / 14) = 0.074180, b - c: 0.225403. Holm over the four: 0 x 4 = 0, 0.074180 x 3 =
    # 0.222540, 0.225403 x 2 = 0.450806 for both of the largest.
    family = {(f["budget"], f["rival"]): f for f in study.frontier_comparisons(frontier)}
    assert set(family) == {("0.5", "b"), ("0.5", "c"), ("1", "a"), ("1", "c")}
    assert family[("1", "a")]["anchor"] == "b"
    assert family[("1", "a")]["p"] == pytest.approx(1 - (6 / 7) ** 0.5)
    order = (("0.5", "b"), ("0.5", "c"), ("1", "a"), ("1", "c"))
    assert [family[k]["holm"] for k in order] == pytest.approx(
        [2 * (1 - 0.6**0.5), 0.0, 3 * (1 - (6 / 7) ** 0.5), 2 * (1 - 0.6**0.5)]
    )
    paired = study.frontier_paired_tables(frontier)
    assert "the 4 comparisons" in paired
    half, whole = paired.split("| 1x: b minus |")
    assert "| 0.5x: a minus |" in half
    rows = {line.split("|")[1].strip(): line for line in half.splitlines() if line.startswith("| ")}
    assert "| 3 | +2.00 | +2.00 | (+2.00, +2.00) | 0 | 0 |" in rows["c"]  # a - c at 0.5x: no spread
    rows = {line.split("|")[1].strip(): line for line in whole.splitlines() if line.startswith("| ")}
    # b - a at 1x: mean 2, median 2, 2 -+ 4.302653 / sqrt 3
    expected = "| 3 | +2.00 | +2.00 | (-0.48, +4.48) | 0.0742 | 0.2225 | 0: +3.00, 1: +1.00, 2: +2.00 |"
    assert expected in rows["a"]
    section = study.frontier_section(frontier, {"reference": "s_a", "reference_epochs": 2,
                                                "seconds": {"s_a": 5.0}, "timed": True}, "a")  # fmt: skip
    assert "0.5x = 5 s, 1x = 10 s" in section and "| b at 0.5x | 3 | 1 (seeds 2) | 0 |" in section


def test_contrasts_parse_and_refuse_bad_input():
    assert study.parse_contrasts(["sage_ce:sage_ce_random", " a : b ", "a:b"]) == [
        ("sage_ce", "sage_ce_random"), ("a", "b")]  # fmt: skip
    assert study.parse_contrasts(None) == []
    for bad in ("sage_ce", "a:b:c", ":b", "a:", "a:a"):
        with pytest.raises(ValueError, match="--contrast"):
            study.parse_contrasts([bad])


def test_named_contrasts_on_a_small_fake_study():
    frontier = _small_frontier()
    del frontier["1"]["b"]  # a contrast whose method has no run at a budget is left out there
    frontier["1"]["d"] = frontier["1"]["c"]
    contrasts = [("c", "a"), ("b", "c")]
    family = {
        (f["budget"], f["anchor"], f["rival"]): f for f in study.frontier_contrasts(frontier, contrasts)
    }
    assert set(family) == {("0.5", "c", "a"), ("0.5", "b", "c"), ("1", "c", "a")}
    # 0.5x: c - a = -2, -2, -2 (no spread: p 0); b - c = 1, 0, 2 (t = sqrt 3, 2 dof: p = 1 - sqrt(3/5));
    # 1x: c - a = 2, -1, 2 (mean 1, sd sqrt 3, t = 1: p = 1 - 1/sqrt 3). Holm over these three alone:
    # 0 x 3 = 0, 0.225403 x 2 = 0.450806, then max(0.450806, 0.422650) = 0.450806.
    assert family[("0.5", "c", "a")]["diffs"] == [-2.0, -2.0, -2.0] and family[("0.5", "c", "a")]["p"] == 0
    assert family[("0.5", "b", "c")]["p"] == pytest.approx(1 - 0.6**0.5)
    assert family[("1", "c", "a")]["p"] == pytest.approx(1 - 3**-0.5)
    assert [family[k]["holm"] for k in (("0.5", "c", "a"), ("0.5", "b", "c"), ("1", "c", "a"))] == (
        pytest.approx([0.0, 2 * (1 - 0.6**0.5), 2 * (1 - 0.6**0.5)]))  # fmt: skip
    table = study.frontier_contrast_table(frontier, contrasts)
    assert "the 3 contrasts below" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "minus" in line]
    assert [r.split("|")[1:3] for r in rows] == [
        [" c minus a ", " 0.5x "], [" c minus a ", " 1x "], [" b minus c ", " 0.5x "]]  # fmt: skip
    # c - a at 1x: mean 1, median 2, 1 -+ t(0.975, 2) sqrt 3 / sqrt 3 = 1 -+ 4.302653
    assert rows[1].endswith(
        "| 3 | +1.00 | +2.00 | (-3.30, +5.30) | 0.4226 | 0.4508 | 0: +2.00, 1: -1.00, 2: +2.00 |"
    )
    assert study.frontier_contrast_table(frontier, [("a", "zzz")]) == ""
    plan = {"reference": "s_a", "reference_epochs": 2, "seconds": {"s_a": 5.0}, "timed": True}
    assert "**Named contrasts at each budget**" in study.frontier_section(frontier, plan, "a", contrasts)
    assert "Named contrasts" not in study.frontier_section(frontier, plan, "a")


def test_frontier_figure_draws_each_method_through_its_budgets(tmp_path):
    frontier = _small_frontier()
    figure = tmp_path / "frontier.png"
    drawn = study.plot_frontier(frontier, figure, "t")
    assert drawn["a"] == [(10.0, 81.0, 1.0), (20.0, 83.0, 1.0)]
    assert drawn["c"] == [(9.0, 79.0, 1.0), (18.0, 84.0, 2.0)]
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fake_trainer(monkeypatch, own_epochs: int = 4) -> list:
    """Replace the study's training subprocess by one that writes a finished fake run (val and test top-1
    60 + its epochs; ``own_epochs`` where the command gives none); returns the list of (folder, run,
    epochs) it is called with, in order."""
    trained = []

    def fake_run(command, check):
        folder = Path(command[command.index("--output") + 1])
        name = command[command.index("--experiment") + 1]
        epochs = int(command[command.index("--epochs") + 1]) if "--epochs" in command else own_epochs
        trained.append((folder.name, name, epochs))
        stem, seed = name.rsplit("-seed", 1)
        _fake_val_run(folder, stem, int(seed), val=60.0 + epochs, test=60.0 + epochs, epochs=epochs)

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    return trained


def test_frontier_trains_budget_by_budget_reuses_the_equal_epoch_runs_and_resumes(tmp_path, monkeypatch):
    configs = []
    for name in ("s_vanilla", "s_sage"):
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text("epochs: 4\n")
    out, record = tmp_path / "out", tmp_path / "record"
    for seed in (0, 1):
        _fake_val_run(out, "s_vanilla", seed, val=70.0, test=71.0 + seed)
        _fake_val_run(out, "s_sage", seed, val=72.0, test=73.0 + seed)
    (out / "_timing").mkdir()
    (out / "_timing" / "epoch_seconds.json").write_text(json.dumps({"s_vanilla": 1.0, "s_sage": 2.0}))
    trained = _fake_trainer(monkeypatch)
    parser = __import__("argparse").ArgumentParser()
    study.add_arguments(parser)
    common = [*map(str, configs), "--seeds", "0", "1", "--output", str(out), "--select-on", "val",
              "--time-steps", "3", "--record", str(record), "--frontier"]  # fmt: skip
    assert study.run(parser.parse_args([*common, "0.5", "1", "2"])) == 0
    # budget 4 x 1 s = 4 s: vanilla round(b x 4), sage round(b x 4 / 2); at 1x vanilla's and at 2x sage's
    # epochs are their own schedule (4): the equal-epoch runs, not trained again. Smallest budget first.
    assert trained == [
        ("b0.5", "s_vanilla-seed0", 2), ("b0.5", "s_sage-seed0", 1),
        ("b0.5", "s_vanilla-seed1", 2), ("b0.5", "s_sage-seed1", 1),
        ("b1", "s_sage-seed0", 2), ("b1", "s_sage-seed1", 2),
        ("b2", "s_vanilla-seed0", 8), ("b2", "s_vanilla-seed1", 8),
    ]  # fmt: skip
    plan = json.loads((out / "frontier" / "plan.json").read_text())
    assert plan["epochs"] == {"0.5": {"s_vanilla": 2, "s_sage": 1}, "1": {"s_vanilla": 4, "s_sage": 2},
                              "2": {"s_vanilla": 8, "s_sage": 4}}  # fmt: skip
    assert plan["reference"] == "s_vanilla" and plan["timed"]
    assert plan["schedules"] == {"s_vanilla": 4, "s_sage": 4}
    assert (record / "frontier" / "plan.json").is_file()
    assert (record / "frontier" / "b0.5" / "s_sage-seed1" / "summary.json").is_file()
    assert study.run(parser.parse_args([*common, "0.5", "1", "2"])) == 0 and len(trained) == 8  # all done
    # a budget added later: only its runs are trained, the plan keeps the others
    assert study.run(parser.parse_args([*common, "0.5", "1", "2", "4"])) == 0
    assert trained[8:] == [("b4", "s_vanilla-seed0", 16), ("b4", "s_sage-seed0", 8),
                           ("b4", "s_vanilla-seed1", 16), ("b4", "s_sage-seed1", 8)]  # fmt: skip
    # another machine, an empty output folder and the record: every run and the plan restored, none trained
    there = [*common[:6], str(tmp_path / "there"), *common[7:], "0.5", "1", "2", "4"]
    assert study.run(parser.parse_args(there)) == 0 and len(trained) == 12
    assert (tmp_path / "there" / "frontier" / "b4" / "s_sage-seed1" / "summary.json").is_file()
    # a config added without --time-steps would be planned on another clock: refused
    extra = tmp_path / "s_cheap.yaml"
    extra.write_text("epochs: 4\n")
    _fake_val_run(out, "s_cheap", 0, val=60.0, test=60.0)
    _fake_val_run(out, "s_cheap", 1, val=60.0, test=60.0)
    untimed = [*map(str, configs), str(extra), "--seeds", "0", "1", "--output", str(out), "--frontier", "1"]
    with pytest.raises(ValueError, match="same clock"):
        study.run(parser.parse_args(untimed))
    with pytest.raises(ValueError, match="--frontier"):
        study.run(parser.parse_args([*common, "0"]))
    # the plan was made on vanilla's schedule: another reference is refused, not silently ignored
    with pytest.raises(ValueError, match="planned on s_vanilla"):
        study.run(parser.parse_args([*common, "1", "--budget-reference", "sage"]))


def test_frontier_skip_equal_epochs_trains_only_the_budgets(tmp_path, monkeypatch):
    """--skip-equal-epochs: no config's own schedule is trained first, except where it is a budget's point
    (vanilla at 1x), which is then trained in the equal-epoch folder; the report has the frontier only."""
    configs = []
    for name in ("s_vanilla", "s_sage"):
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text("epochs: 4\n")
    out = tmp_path / "out"
    (out / "_timing").mkdir(parents=True)
    (out / "_timing" / "epoch_seconds.json").write_text(json.dumps({"s_vanilla": 1.0, "s_sage": 2.0}))
    trained = _fake_trainer(monkeypatch)
    parser = __import__("argparse").ArgumentParser()
    study.add_arguments(parser)
    report = tmp_path / "r.md"
    args = [*map(str, configs), "--seeds", "0", "--output", str(out), "--select-on", "val", "--time-steps",
            "3", "--skip-equal-epochs", "--frontier", "0.5", "1", "--report", str(report)]  # fmt: skip
    assert study.run(parser.parse_args(args)) == 0
    assert trained == [
        ("b0.5", "s_vanilla-seed0", 2), ("b0.5", "s_sage-seed0", 1),
        ("b1", "s_sage-seed0", 2), ("out", "s_vanilla-seed0", 4),
    ]  # fmt: skip
    text = report.read_text()
    assert "**Equal epochs**" in text and "**Accuracy against training compute**" in text
    # without the flag the sage's own schedule (4 epochs) is trained too, before the budgets
    assert study.run(parser.parse_args([a for a in args if a != "--skip-equal-epochs"])) == 0
    assert trained[4:] == [("out", "s_sage-seed0", 4)]


def _tiny_config(path, name, extra=""):
    path.write_text(
        "dataset: fashion_mnist\ntrain_subset: 64\nval_size: 32\nmodel: preactresnet18_tiny\n"
        "num_classes: 10\ninput_size: [1, 14, 14]\nepochs: 2\nbatch_size: 16\nvalidation_batch_size: 1000\n"
        f"lr: 0.05\nworkers: 0\nexperiment: {name}\n{extra}"
    )
    return path


def test_timm_sage_study_frontier_end_to_end(tmp_path, monkeypatch, capsys):
    """Two tiny configs trained for real: the frontier's runs have the planned epochs, the reference's
    own schedule at 1x is its equal-epoch run, and a second invocation trains nothing."""
    from timm_sage.data.idx import FASHION_MNIST_ROOT
    from timm_sage.tools.cli import main

    if not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("no Fashion-MNIST")
    vanilla = _tiny_config(tmp_path / "t_vanilla.yaml", "t_vanilla")
    cutmix = _tiny_config(tmp_path / "t_cutmix.yaml", "t_cutmix", "cutmix: 1.0\n")
    out = tmp_path / "out"
    # the clock given (seconds per epoch), so that the plan is known: vanilla 2 epochs x 1 s = 2 s;
    # 0.5x: vanilla 1 epoch, cutmix 2 (its own schedule); 1x: vanilla 2 (its own), cutmix 4
    (out / "_timing").mkdir(parents=True)
    (out / "_timing" / "epoch_seconds.json").write_text(json.dumps({"t_vanilla": 1.0, "t_cutmix": 0.5}))
    report = tmp_path / "r.md"
    command = ["study", str(vanilla), str(cutmix), "--seeds", "0", "--output", str(out), "--time-steps", "3",
               "--select-on", "val", "--frontier", "0.5", "1", "--report", str(report),
               "--frontier-figure", str(tmp_path / "frontier.png")]  # fmt: skip
    assert main(command) == 0

    def epochs(folder):
        return len((folder / "metrics.jsonl").read_text().splitlines())

    assert epochs(out / "frontier" / "b0.5" / "t_vanilla-seed0") == 1
    assert epochs(out / "frontier" / "b1" / "t_cutmix-seed0") == 4
    assert epochs(out / "t_vanilla-seed0") == 2 and epochs(out / "t_cutmix-seed0") == 2
    trained = sorted(p.relative_to(out).as_posix() for p in (out / "frontier").glob("b*/*-seed0"))
    assert trained == ["frontier/b0.5/t_vanilla-seed0", "frontier/b1/t_cutmix-seed0"]
    text = report.read_text()
    table = text.split("**Accuracy against training compute**")[1].split("**Best on validation")[0]
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line[:2] == "| "}
    # per budget: epochs, test, median, seconds on the given clock (epochs x s/epoch), for 0.5x then 1x
    assert [rows["vanilla"][i].strip() for i in (2, 5, 6, 9)] == ["1", "1", "2", "2"]
    assert [rows["cutmix"][i].strip() for i in (2, 5, 6, 9)] == ["2", "1", "4", "2"]
    assert "(1)" in rows["cutmix"][7]  # one run at 1x
    assert "| 1x | " in text and (tmp_path / "frontier.png").is_file()
    assert "No comparison: no two methods share two finished seeds" in text  # one seed: nothing paired
    capsys.readouterr()

    def no_training(command, check):
        raise AssertionError(f"trained again: {command}")

    monkeypatch.setattr(study.subprocess, "run", no_training)
    assert main([*command, "--contrast", "cutmix:vanilla"]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    assert "No contrast: no named pair shares two finished seeds" in report.read_text()  # one seed
    # the CLI's argument error (exit status 2), before anything is read or trained
    assert main([*command, "--contrast", "mixup:vanilla"]) == 2
    assert "--contrast: 'mixup' not among the study's methods (cutmix, vanilla)" in capsys.readouterr().err


def test_a_config_added_to_a_frontier_is_planned_on_the_stored_scale(tmp_path, monkeypatch):
    configs = {}
    for name in ("s_vanilla", "s_sage", "s_cheap"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text("epochs: 4\n")
        _fake_val_run(tmp_path / "out", name, 0, val=70.0, test=71.0)
    out = tmp_path / "out"
    (out / "_timing").mkdir()
    (out / "_timing" / "epoch_seconds.json").write_text(json.dumps({"s_vanilla": 1.0, "s_sage": 2.0}))
    monkeypatch.setattr(study.subprocess, "run", lambda command, check: None)  # nothing finishes: plan only
    # the machine is twice as fast now: s_cheap 0.25 s beside vanilla's 0.5 s -> 0.5 s on the stored scale
    monkeypatch.setattr(study, "time_epochs", lambda paths, *_: {"s_vanilla": 0.5, "s_cheap": 0.25})
    parser = __import__("argparse").ArgumentParser()
    study.add_arguments(parser)
    first = [str(configs["s_vanilla"]), str(configs["s_sage"]), "--seeds", "0", "--output", str(out),
             "--time-steps", "3", "--frontier", "0.5", "2"]  # fmt: skip
    assert study.run(parser.parse_args(first)) == 0
    plan = json.loads((out / "frontier" / "plan.json").read_text())
    assert plan["epochs"] == {"0.5": {"s_vanilla": 2, "s_sage": 1}, "2": {"s_vanilla": 8, "s_sage": 4}}
    assert study.run(parser.parse_args([*first[:2], str(configs["s_cheap"]), *first[2:]])) == 0
    plan = json.loads((out / "frontier" / "plan.json").read_text())
    # s_cheap at 0.5 s per epoch: round(0.5 x 4 / 0.5) = 4 (its own schedule), round(2 x 4 / 0.5) = 16
    assert plan["epochs"] == {"0.5": {"s_vanilla": 2, "s_sage": 1, "s_cheap": 4},
                              "2": {"s_vanilla": 8, "s_sage": 4, "s_cheap": 16}}  # fmt: skip
    assert plan["seconds"] == {"s_vanilla": 1.0, "s_sage": 2.0, "s_cheap": 0.5}
