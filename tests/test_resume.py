"""``timm-sage train --resume RUN/``: the run's own settings and folder, from any directory; options given
again must agree (only --epochs may change); Ctrl-C leaves a checkpoint and prints the resume command."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml
from test_data import make_image_folder

from timm_sage.tools import cli
from timm_sage.train import command, outputs
from timm_sage.train.resume import resume_config
from timm_sage.train.session import STOP_ENV, StopForTest, Trainer


def _config(tmp_path: Path) -> dict:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=8, size=12, test_per_class=2)
    return {
        "data_dir": str(data), "model": "preactresnet18_tiny", "model_kwargs": {"width": 0.0625},
        "epochs": 2, "batch_size": 8, "opt": "sgd", "lr": 0.05, "weight_decay": 1e-4, "sched": "cosine",
        "warmup_epochs": 0, "mixup": 1.0, "mixup_mode": "sage", "smoothing": 0.0, "sage_update_ratio": 0.7,
        "sage_rand_pos": 0.02, "model_ema": True, "model_ema_decay": 0.9, "seed": 3, "workers": 0,
        # as the shipped configs do: a relative output folder and an experiment name
        "output": "runs", "experiment": "tiny",
    }  # fmt: skip


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {**state["model"], **{f"ema.{k}": v for k, v in state["ema"].items()}}


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


def test_stopped_run_resumed_from_another_directory_with_only_the_folder(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir()
    elsewhere.mkdir()
    previous_umask = os.umask(0o022)
    try:
        monkeypatch.chdir(launch)
        assert cli.main(["train", "--config", str(config), "--output", "full", "--no-progress"]) == 0
        monkeypatch.setenv(STOP_ENV, "4")  # 3 steps per epoch: stopped inside epoch 2
        with pytest.raises(StopForTest):
            cli.main(["train", "--config", str(config), "--no-progress"])
        monkeypatch.delenv(STOP_ENV)
        run = launch / "runs" / "tiny"
        assert torch.load(run / "last.pth.tar", weights_only=True)["epoch"] == 1
        before = _files(tmp_path)
        capsys.readouterr()

        monkeypatch.chdir(elsewhere)
        assert cli.main(["train", "--resume", f"{run}/", "--no-progress"]) == 0
    finally:
        os.umask(previous_umask)
    out = capsys.readouterr().out
    assert "24 train / 6 test images, 2 epochs" in out and "resuming at epoch 2" in out
    assert list(elsewhere.iterdir()) == []  # nothing written in the current directory
    after = _files(tmp_path)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed and all(name.startswith("launch/runs/tiny/") for name in changed), sorted(changed)
    _assert_same_weights(run / "last.pth.tar", launch / "full" / "tiny" / "last.pth.tar")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    full = [
        json.loads(line) for line in (launch / "full" / "tiny" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["test_loss"] for r in rows] == [r["test_loss"] for r in full]
    for path in run.iterdir():  # every output honours the umask
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def _fake_run(tmp_path: Path, with_args: bool = True) -> Path:
    """A run folder with a checkpoint that stores its settings (or only an args.yaml beside it)."""
    config = _config(tmp_path)
    config["output"] = str(tmp_path / "runs")
    cfg = command.load_config(None, config)
    run = tmp_path / "runs" / "tiny"
    state = {"epoch": 2, "model": {}, **({"args": dict(cfg)} if with_args else {})}
    outputs.save_checkpoint(run / "last.pth.tar", state)
    if not with_args:
        outputs.write_args(run, cfg)
    return run


def _resume(argv: list[str]):
    return command.config_from_args(cli.build_parser("train").parse_args(["train", *argv]))


@pytest.mark.parametrize("with_args", [True, False])
def test_resume_restores_the_run_settings_and_allows_only_epochs_to_change(tmp_path, with_args):
    run = _fake_run(tmp_path, with_args)
    cfg = _resume(["--resume", str(run)])
    assert cfg.resume == str(run / "last.pth.tar") and cfg.lr == 0.05 and cfg.epochs == 2
    assert cfg.data_dir == str(tmp_path / "data") and cfg.model_kwargs == {"width": 0.0625}
    assert _resume(["--resume", str(run / "last.pth.tar"), "--epochs", "5", "--lr", "0.05"]).epochs == 5
    with pytest.raises(ValueError, match="epochs=1 is fewer than the 2 epochs the run has done"):
        _resume(["--resume", str(run), "--epochs", "1"])
    with pytest.raises(ValueError, match="lr=0.3.*batch_size=4") as error:
        _resume(["--resume", str(run), "--lr", "0.3", "--batch-size", "4"])
    assert "the run has 0.05" in str(error.value) and "Only --epochs may change" in str(error.value)
    with pytest.raises(ValueError, match="output="):
        _resume(["--resume", str(run), "--output", str(tmp_path / "elsewhere")])
    assert _resume(["--resume", str(run), "--output", str(tmp_path / "runs"), "--experiment", "tiny"])


def test_resume_with_the_config_again_checks_it_but_ignores_its_output_folder(tmp_path, monkeypatch):
    run = _fake_run(tmp_path)
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump({**_config(tmp_path), "output": "output/train", "experiment": "x"}))
    monkeypatch.chdir(tmp_path)
    cfg = _resume(["--config", str(same), "--resume", str(run)])
    assert cfg.resume == str(run / "last.pth.tar") and cfg.epochs == 2
    # timm-sage study's resume command: the config again, with its own --seed/--output/--experiment
    study = ["--config", str(same), "--seed", "3", "--output", "runs", "--experiment", "tiny"]
    assert _resume([*study, "--resume", str(run / "last.pth.tar")]).seed == 3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**_config(tmp_path), "epochs": 6, "sage_rand_pos": 0.5}))
    with pytest.raises(ValueError, match="epochs=6.*--config.*sage_rand_pos=0.5"):
        _resume(["--config", str(other), "--resume", str(run)])
    assert _resume(["--config", str(other), "--resume", str(run), "--epochs", "6", "--sage-rand-pos", "0.02"])


def test_resume_errors_are_one_line_cli_errors(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert cli.main(["train", "--resume", str(run), "--lr", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("timm-sage train: error: resume:") and "lr=0.3" in err and "Traceback" not in err
    assert cli.main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "missing does not exist (give a run folder or its last.pth.tar)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "holds no last.pth.tar" in capsys.readouterr().err


def _interrupt_at(monkeypatch, step: int) -> None:
    calls = {"n": 0}
    original = Trainer._optimizer_step

    def step_or_interrupt(self):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", step_or_interrupt)


def test_ctrl_c_leaves_a_checkpoint_and_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**_config(tmp_path), "output": str(tmp_path / "runs")}))
    assert cli.main(["train", "--config", str(config), "--experiment", "full", "--no-progress"]) == 0

    with monkeypatch.context() as patch:  # Ctrl-C at the 2nd step of epoch 1: nothing finished yet
        _interrupt_at(patch, 2)
        assert cli.main(["train", "--config", str(config), "--experiment", "early", "--no-progress"]) == 130
    err = capsys.readouterr().err
    early = tmp_path / "runs" / "early"
    assert "Traceback" not in err and "interrupted (Ctrl-C) in epoch 1/2" in err
    assert "holds the start of training" in err and f"timm-sage train --resume {early}/" in err
    assert torch.load(early / "last.pth.tar", weights_only=True)["epoch"] == 0
    assert cli.main(["train", "--resume", f"{early}/", "--no-progress"]) == 0
    _assert_same_weights(early / "last.pth.tar", tmp_path / "runs" / "full" / "last.pth.tar")

    with monkeypatch.context() as patch:  # Ctrl-C in epoch 2: the checkpoint of epoch 1 stands
        _interrupt_at(patch, 5)
        assert cli.main(["train", "--config", str(config), "--experiment", "late", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "in epoch 2/2" in err and "holds the end of epoch 1; the finished steps of epoch 2" in err
    late = tmp_path / "runs" / "late"
    assert cli.main(["train", "--resume", str(late), "--epochs", "3", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (late / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert yaml.safe_load((late / "args.yaml").read_text())["epochs"] == 3


def test_resume_config_reads_a_checkpoint_of_an_older_version(tmp_path):
    """Checkpoints written before the weights_only-safe RNG state (numpy arrays inside) still resume."""
    import numpy as np

    run = _fake_run(tmp_path)
    state = torch.load(run / "last.pth.tar", weights_only=True)
    state["rng"] = {"numpy": np.random.get_state()}
    torch.save(state, run / "last.pth.tar")
    assert resume_config(run).lr == 0.05
