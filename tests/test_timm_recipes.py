"""The ImageNet recipes for timm's train.py (train_configs/timm_train_py/): every key is a train.py option,
the SAGE keys are valid and give the recommended settings, the models build and bind with the levers,
``timm-sage train`` does not list them as its own configs, and, where timm releases are laid out
(tests/test_timm_releases.py), the newest release's train.py runs one epoch of SAGE steps with each at
a reduced size (32 px, batch 2) on a fake ImageFolder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import timm
import yaml
from timm_releases import fake_imagefolder, newest_release_with_train_py, run_train_py_with_probe

from timm_sage import SageMixup, _timm_compat, plugin
from timm_sage.train import configs
from timm_sage.train.config import DEFAULT_ONLY, NEUTRAL, SUPPORTED

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "train_configs" / "timm_train_py").glob("*.yaml"))


def test_there_is_a_resnet50_and_a_vit_recipe() -> None:
    models = {yaml.safe_load(path.read_text())["model"] for path in RECIPES}
    assert models == {"resnet50", "vit_small_patch16_224"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_key_is_a_train_py_option_and_sage_gets_the_recommended_settings(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    known = set(SUPPORTED) | set(NEUTRAL) | set(DEFAULT_ONLY)
    assert set(raw) <= known, set(raw) - known
    assert raw["mixup_mode"] == "sage" and raw["mixup"] > 0 and raw["img_size"] == 224
    options = plugin.sage_options_from_args(argparse.Namespace(**raw))  # validated as the plugin does
    assert options["search_size"] == "auto" and options["saliency_scale"] == 0.5
    assert options["update_ratio"] == 1.0 and options["saliency_loss"] == "cross_entropy"
    assert options["amp_dtype"] is not None
    assert timm.is_model(raw["model"])


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_the_recipe_model_binds_with_its_sage_options(path: Path) -> None:
    """The lever (the pass at 112 px) is accepted: the ViT recipe builds its model with
    dynamic_img_size; without it the mixer refuses (tests/test_vit.py)."""
    raw = yaml.safe_load(path.read_text())
    model = timm.create_model(raw["model"], num_classes=raw["num_classes"], **raw.get("model_kwargs", {}))
    options = plugin.sage_options_from_args(argparse.Namespace(**raw))
    options.pop("amp_dtype")
    mixer = SageMixup(mode="sage", mixup_alpha=raw["mixup"], num_classes=raw["num_classes"], model=model,
                      **options)  # fmt: skip
    assert mixer.saliency_scale == 0.5 and mixer.search_size == "auto"


def test_timm_sage_train_does_not_take_them_for_its_own_configs() -> None:
    assert not set(configs.packaged_configs()) & {path.stem for path in RECIPES}
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config"):
        configs.find_config(RECIPES[0].stem)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_one_epoch_of_train_py_with_the_recipe_at_a_reduced_size(path: Path, tmp_path: Path) -> None:
    release = newest_release_with_train_py(_timm_compat.TIMM_FLOOR)
    if release is None:
        pytest.skip("TIMM_SAGE_TIMM_RELEASES names no timm release with its train.py (.ci/timm_releases.sh)")
    data = fake_imagefolder(tmp_path / "data")
    # The recipe as written, but its size and length: 32 px, batch 2, one epoch of the 8 images, CPU.
    command = [
        sys.executable, "train.py", "--config", str(path), "--data-dir", str(data), "--img-size", "32",
        "-b", "2", "--epochs", "1", "--warmup-epochs", "0", "--workers", "1", "--device", "cpu",
        "--log-interval", "1", "--output", str(tmp_path / "out"),
        "--device-modules", "timm_sage.plugin", "sage_probe",
    ]  # fmt: skip
    report = run_train_py_with_probe(release, command, tmp_path)
    assert report["calls"] == 4 and report["methods"] == ["sage"] and report["mixed"] == [True]
