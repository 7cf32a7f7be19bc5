"""SAGE presets: ``SageConfig.from_preset`` and every entry point that takes a preset name.

The one rule everywhere: options given explicitly win over the preset's values, the others take them,
and fields neither sets keep SageConfig's (reference) defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import warnings

import pytest
import timm
import yaml
from test_data import make_image_folder

from timm_sage import SageConfig, SageMixup, launcher, plugin
from timm_sage.config import (
    PRESET_HELP,
    SAGE_DEFAULTS,
    SAGE_PRESET_DESCRIPTIONS,
    SAGE_PRESETS,
    SAGE_RETIRED_PRESETS,
)
from timm_sage.train import command
from timm_sage.train.config import load_config
from timm_sage.train.session import Trainer

# clutter is retired (it warns, see test_a_retired_preset_warns_why_and_keeps_its_values); the tests of
# the preset mechanism below use it all the same, so its warning is expected there.
pytestmark = pytest.mark.filterwarnings("ignore:SAGE preset 'clutter' is retired:FutureWarning")

CLUTTER = {"upper_lambda": 0.6, "update_ratio": 0.7, "rand_pos": 0.01, "saliency_loss": "cross_entropy"}


def _expected(**changes) -> SageConfig:
    """SageConfig built field by field: the reference defaults, the clutter values, then ``changes``."""
    values = {f.name: f.default for f in dataclasses.fields(SageConfig)}
    values.update(CLUTTER)
    values.update(changes)
    return SageConfig(**values)


# --------------------------------------------------------------------------------------- SageConfig
def test_every_preset_is_described_and_builds_a_valid_config():
    assert set(SAGE_PRESETS) == set(SAGE_PRESET_DESCRIPTIONS) == {"clutter"}
    assert SAGE_PRESETS["clutter"] == CLUTTER
    for name, values in SAGE_PRESETS.items():
        assert set(values) <= set(SageConfig.names())
        assert SAGE_PRESET_DESCRIPTIONS[name].strip()
        config = SageConfig.from_preset(name)
        assert {key: getattr(config, key) for key in values} == values
    # The defaults stay the reference code's: the preset changes what SageConfig() gives nowhere.
    assert SageConfig() == SAGE_DEFAULTS and SAGE_DEFAULTS.saliency_loss == "bce_softmax"
    assert SAGE_DEFAULTS.update_ratio == 1.0


def test_from_preset_values_and_overrides_win():
    config = SageConfig.from_preset("clutter")
    assert config == _expected()
    assert (config.update_ratio, config.saliency_loss, config.blur_kernel) == (0.7, "cross_entropy", 5)
    # An override equal to SageConfig's default still wins over the preset's value.
    assert SageConfig.from_preset("clutter", update_ratio=1.0).update_ratio == 1.0
    assert SageConfig.from_preset("clutter", saliency_loss="bce_softmax", blur_kernel=3) == _expected(
        saliency_loss="bce_softmax", blur_kernel=3
    )
    with pytest.raises(ValueError, match="update_ratio"):
        SageConfig.from_preset("clutter", update_ratio=1.5)


def test_a_retired_preset_warns_why_and_keeps_its_values():
    assert set(SAGE_RETIRED_PRESETS) <= set(SAGE_PRESETS) and "clutter" in SAGE_RETIRED_PRESETS
    # Every entry point resolves a preset through SageConfig.from_preset, so each warns once per use,
    # and the values stay what they were before the preset was retired.
    with pytest.warns(FutureWarning, match=r"SAGE preset 'clutter' is retired in 0\.2\.0.*upper_lambda 0\.6"):
        assert SageConfig.from_preset("clutter") == _expected()
    with pytest.warns(FutureWarning, match="retired"):
        assert SageMixup(mode="sage", num_classes=10, preset="clutter").config == _expected()
    with pytest.warns(FutureWarning, match="retired"):
        cfg = load_config(None, {"sage_preset": "clutter"})
    assert (cfg.sage_update_ratio, cfg.sage_saliency_loss) == (0.7, "cross_entropy")
    # A preset that is not retired does not warn; no setting gives a preset without asking for it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SageConfig()
        SageMixup(mode="sage", num_classes=10, update_ratio=0.7, saliency_loss="cross_entropy")
    # The help every entry point shows says so.
    assert "clutter (retired): upper_lambda 0.6" in PRESET_HELP


def test_unknown_preset_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"preset must be one of 'clutter', got 'cluter'"):
        SageConfig.from_preset("cluter")
    with pytest.raises(ValueError, match=r"config: sage_preset must be one of 'clutter'"):
        SageConfig.from_mapping({}, prefix="sage_", source="config", preset="cluter")


def test_from_mapping_with_a_preset_keeps_the_given_keys():
    config = SageConfig.from_mapping(
        {"sage_update_ratio": 0.5, "sage_rand_pos": None}, prefix="sage_", preset="clutter"
    )
    assert config == _expected(update_ratio=0.5)  # None keeps the preset's value, as it keeps a default


# ---------------------------------------------------------------------------------------- SageMixup
def test_sage_mixup_preset_fills_the_options_and_keywords_win():
    mixer = SageMixup(mode="sage", num_classes=10, preset="clutter")
    assert mixer.config == _expected()
    assert (mixer.update_ratio, mixer.saliency_loss, mixer.upper_lambda) == (0.7, "cross_entropy", 0.6)
    mixer = SageMixup(
        mode="sage", num_classes=10, preset="clutter", saliency_loss="bce_softmax", rand_pos=0.05
    )
    assert mixer.config == _expected(saliency_loss="bce_softmax", rand_pos=0.05)
    assert SageMixup(mode="sage", num_classes=10).config == SAGE_DEFAULTS  # no preset: the defaults


def test_sage_mixup_preset_with_config_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"config=.*preset=|preset=.*config="):
        SageMixup(mode="sage", num_classes=10, preset="clutter", config=SageConfig())
    with pytest.raises(ValueError, match="preset must be one of 'clutter'"):
        SageMixup(mode="sage", num_classes=10, preset="nope")


# ---------------------------------------------------------------------------------- timm-sage train
def _tiny_config(tmp_path) -> dict:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=12, test_per_class=1)
    return {
        "data_dir": str(data), "model": "preactresnet18_tiny", "model_kwargs": {"width": 0.0625},
        "epochs": 1, "batch_size": 4, "mixup": 1.0, "mixup_mode": "sage", "workers": 0,
        "output": str(tmp_path / "out"), "sage_preset": "clutter", "sage_update_ratio": 1.0,
    }  # fmt: skip


def test_train_config_preset_with_yaml_and_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_tiny_config(tmp_path)))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--sage-saliency-loss", "bce_softmax"])
    cfg = command.config_from_args(args)
    # The YAML's update_ratio (equal to SageConfig's default) and the flag's saliency_loss win.
    assert cfg.sage_preset == "clutter"
    assert (cfg.sage_update_ratio, cfg.sage_saliency_loss, cfg.sage_upper_lambda) == (1.0, "bce_softmax", 0.6)
    trainer = Trainer(cfg, progress=False)
    assert trainer.mixer.config == _expected(update_ratio=1.0, saliency_loss="bce_softmax")
    # Without overrides the preset's values reach the mixer; without the preset, the defaults.
    plain = load_config(path, ["--sage-update-ratio", "0.7"])
    assert (plain.sage_update_ratio, plain.sage_saliency_loss) == (0.7, "cross_entropy")
    none = load_config(None, {"sage_preset": None})
    assert (none.sage_update_ratio, none.sage_saliency_loss) == (1.0, "bce_softmax")
    with pytest.raises(ValueError, match="sage_preset must be one of 'clutter'"):
        load_config(None, ["--sage-preset", "nope"])


def test_train_args_yaml_with_a_preset_is_itself_a_valid_config(tmp_path):
    cfg = load_config(None, {"sage_preset": "clutter", "sage_rand_pos": 0.05})
    again = load_config(None, dict(cfg))  # every key given, as args.yaml holds them
    assert {k: again[k] for k in cfg} == dict(cfg)
    assert (again.sage_rand_pos, again.sage_saliency_loss) == (0.05, "cross_entropy")


# ------------------------------------------------------------------------- launcher and plugin flags
def _launcher_args(argv: list[str], **yaml_keys) -> argparse.Namespace:
    """train.py's parser with the launcher's flags; ``yaml_keys`` as train.py applies a --config YAML."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixup", type=float, default=1.0)
    parser.add_argument("--mixup-mode", default="sage")
    launcher.add_sage_arguments(parser)
    parser.set_defaults(**yaml_keys)
    return parser.parse_args(argv)


def test_launcher_preset_flag_with_an_explicit_override():
    args = _launcher_args(["--sage-preset", "clutter", "--sage-saliency-loss", "bce_softmax"])
    options = plugin.sage_options_from_args(args)
    assert "preset" not in options
    assert SageConfig(**{k: options[k] for k in SageConfig.names()}) == _expected(saliency_loss="bce_softmax")
    # A YAML key (train.py's set_defaults) counts as given too, even at SageConfig's default value.
    args = _launcher_args(["--sage-preset", "clutter"], sage_update_ratio=1.0)
    options = plugin.sage_options_from_args(args)
    assert (options["update_ratio"], options["saliency_loss"]) == (1.0, "cross_entropy")
    # No preset: only the given options, as before.
    assert plugin.sage_options_from_args(_launcher_args(["--sage-rand-pos", "0.05"])) == {"rand_pos": 0.05}
    with pytest.raises(SystemExit):
        _launcher_args(["--sage-preset", "nope"])  # argparse's choices
    with pytest.raises(ValueError, match="sage_preset must be one of .*clutter.*nope"):
        plugin.sage_options_from_args(_launcher_args([], sage_preset="nope"))  # a YAML typo


def test_plugin_mixer_gets_the_preset():
    args = _launcher_args(
        ["--sage-preset", "clutter", "--sage-saliency-loss", "bce_softmax", "--sage-seed", "1"]
    )
    args.cutmix, args.cutmix_minmax = 0.0, None
    namespace = {"Mixup": timm.data.Mixup}
    plugin.install(namespace, args)
    mixer = namespace["Mixup"](mixup_alpha=1.0, mode="sage", num_classes=10)
    assert mixer.config == _expected(saliency_loss="bce_softmax")
    assert "--sage-preset {clutter}" in launcher.sage_help()


def test_sage_mixup_keyword_equal_to_the_default_still_wins_over_the_preset():
    mixer = SageMixup(mode="sage", num_classes=10, preset="clutter", update_ratio=1.0, upper_lambda=0.6)
    assert mixer.config == _expected(update_ratio=1.0)
    # The signature still shows (and its defaults still equal) SageConfig's defaults.
    parameters = inspect.signature(SageMixup.__init__).parameters
    for name in SageConfig.names():
        assert parameters[name].default == getattr(SAGE_DEFAULTS, name)
        assert repr(parameters[name].default) == repr(getattr(SAGE_DEFAULTS, name))
    assert type(SageMixup(mode="sage", num_classes=10).config.saliency_loss) is str  # plain values stored
    assert type(SageMixup(mode="sage", num_classes=10).config.blur_kernel) is int
