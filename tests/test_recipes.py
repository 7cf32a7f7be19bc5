"""``timm-sage recipe``: local files and folders, and hf-hub: through the real huggingface_hub client
against a cache laid out here (offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from timm_sage.tools import recipes
from timm_sage.train.config import resolve_config, unsupported_keys

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# a flat train.py args dump, as timm/vit_*_sbb_* repositories publish them
HUB_RECIPE = {
    "model": "vit_little_patch16_reg1_gap_256", "batch_size": 256, "opt": "nadamw", "lr": 0.002,
    "weight_decay": 0.05, "sched": "cosine", "epochs": 600, "warmup_epochs": 5, "mixup": 0.8, "cutmix": 1.0,
    "mixup_mode": "batch", "smoothing": 0.1, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "amp": True,
    "model_ema": True, "model_ema_decay": 0.9998, "log_interval": 50, "data_dir": "/data/imagenet",
}  # fmt: skip


def _lay_out_cache(hf_home: Path, repo: str, files: dict[str, dict]) -> Path:
    org, name = repo.split("/")
    base = hf_home / "hub" / f"models--{org}--{name}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    snapshot = base / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for filename, content in files.items():
        (snapshot / filename).write_text(yaml.safe_dump(content))
    return snapshot


def test_hf_hub_recipe_offline_through_the_cli(tmp_path):
    hf_home = tmp_path / "hf"
    _lay_out_cache(hf_home, "timm/vit_little_sbb", {"train_hparams.yaml": HUB_RECIPE})
    out = tmp_path / "sage.yaml"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "timm_sage.tools.cli", "recipe", "hf-hub:timm/vit_little_sbb", "-o", str(out),
         "--set", "sage_upper_lambda=0.5", "--set", "epochs=10"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(out.read_text())
    assert config["mixup_mode"] == "sage" and config["mixup"] == 0.8  # recipe's alpha kept
    assert config["sage_upper_lambda"] == 0.5 and config["epochs"] == 10 and config["cutmix"] == 1.0
    assert {k: v for k, v in config.items() if k not in ("mixup_mode", "sage_upper_lambda", "epochs")} == {
        k: v for k, v in HUB_RECIPE.items() if k not in ("mixup_mode", "epochs")
    }
    # the report names what timm-sage train refuses, and the escape hatch
    assert "aa=" in done.stdout and "reprob" in done.stdout and "--ignore-unsupported" in done.stdout
    assert out.read_text().startswith(
        "# SAGE config made by `timm-sage recipe` from hf-hub:timm/vit_little_sbb"
    )


def test_hf_hub_revision_other_names_and_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    _lay_out_cache(hf_home, "someone/model", {"timm_training_args.yaml": {"mixup": 0.0, "lr": 0.1}})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe, origin = recipes.load_recipe(f"hf-hub:someone/model@{COMMIT}")
    assert recipe == {"mixup": 0.0, "lr": 0.1} and "timm_training_args.yaml" in origin
    assert recipes.sage_recipe(recipe)["mixup"] == 1.0  # mixing was off: alpha 1.0
    with pytest.raises(FileNotFoundError, match="train_hparams.yaml"):
        recipes.load_recipe("hf-hub:someone/absent")
    with pytest.raises(ValueError, match="ORG/REPO"):
        recipes.load_recipe("hf-hub:justaname")


def test_local_file_and_folder_give_a_config_timm_sage_train_accepts(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    args = {"model": "preactresnet18", "lr": 0.2, "batch_size": 100, "smoothing": 0.0, "log_interval": 20}
    (folder / "args.yaml").write_text(yaml.safe_dump(args))
    recipe, origin = recipes.load_recipe(folder)
    assert origin.endswith("args.yaml") and recipe == args
    result = recipes.sage_recipe(recipe, recipes.parse_sets(["sage_update_ratio=0.7", "mixup=2"]))
    path = recipes.write_recipe(tmp_path / "out" / "sage.yaml", result)
    assert unsupported_keys(result) == {}
    cfg = resolve_config(yaml.safe_load(path.read_text()))
    assert cfg.mixup_mode == "sage" and cfg.mixup == 2.0 and cfg.sage_update_ratio == 0.7 and cfg.lr == 0.2
    assert recipes.load_recipe(path)[0] == result
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind


def test_bad_sources_and_sets(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        recipes.load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(FileNotFoundError, match="train_hparams.yaml"):
        recipes.load_recipe(tmp_path)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        recipes.load_recipe(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="key=value"):
        recipes.parse_sets(["lr"])
    with pytest.raises(ValueError, match="mixup must be > 0"):
        recipes.sage_recipe({"mixup": 0.5}, {"mixup": 0})
