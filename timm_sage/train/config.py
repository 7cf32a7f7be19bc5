"""Configuration of ``timm-sage train``: timm train.py's keys (underscored, as in its ``args.yaml``).

A config is a flat YAML mapping; command-line flags (``--batch-size 64`` or ``--batch_size=64``) override
it. Every key falls in one of four groups:

* ``SUPPORTED``: implemented, with train.py's default (plus ``sage_*`` and ``train_subset``).
* ``NEUTRAL``: train.py keys about logging, performance or distribution that cannot change the result
  here; accepted with any value and ignored.
* ``DEFAULT_ONLY``: train.py keys for features this trainer lacks (RandAugment, random erasing, the
  ImageNet crop pipeline, ...); accepted only at train.py's default ("off") value.
* anything else: an error naming the key. ``ignore_unsupported=True`` turns the last two errors into a
  warning that lists the ignored keys (for hub recipes written for ImageNet).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from timm_sage.config import SageConfig, SearchSize, option_infos
from timm_sage.data.scenes import SceneParams

__all__ = [
    "DEFAULT_ONLY",
    "NEUTRAL",
    "SAGE_SEED_DEFAULT",
    "SUPPORTED",
    "TrainConfig",
    "load_config",
    "parse_overrides",
    "resolve_config",
    "unsupported_keys",
]

# key -> (kind, default). kinds: int, float, str, bool, ints, floats, dict, int3
SUPPORTED: dict[str, tuple[str, Any]] = {
    # data
    "dataset": ("str", ""),
    "data_dir": ("str", None),
    "data": ("str", None),  # train.py's deprecated positional data dir
    "train_split": ("str", "train"),
    "val_split": ("str", "validation"),
    "dataset_download": ("bool", False),
    "class_map": ("str", ""),
    "input_size": ("int3", None),
    "img_size": ("int", None),
    "in_chans": ("int", None),
    "mean": ("floats", None),
    "std": ("floats", None),
    "hflip": ("float", 0.5),
    "no_aug": ("bool", False),
    "train_subset": ("int", None),
    "val_size": ("int", None),  # validation images held out from the training pool (choices are made on it)
    "batch_size": ("int", 128),
    "validation_batch_size": ("int", None),
    "workers": ("int", 4),
    # model
    "model": ("str", "resnet50"),
    "num_classes": ("int", None),
    "pretrained": ("bool", False),
    "initial_checkpoint": ("str", ""),
    "drop": ("float", 0.0),
    "drop_path": ("float", None),
    "drop_block": ("float", None),
    "gp": ("str", None),
    "bn_momentum": ("float", None),
    "bn_eps": ("float", None),
    "model_kwargs": ("dict", {}),
    "channels_last": ("bool", False),
    # optimizer
    "opt": ("str", "sgd"),
    "opt_eps": ("float", None),
    "opt_betas": ("floats", None),
    "opt_kwargs": ("dict", {}),
    "momentum": ("float", 0.9),
    "weight_decay": ("float", 2e-5),
    "clip_grad": ("float", None),
    "clip_mode": ("str", "norm"),
    "layer_decay": ("float", None),
    "lr": ("float", None),
    "lr_base": ("float", 0.1),
    "lr_base_size": ("int", 256),
    "lr_base_scale": ("str", ""),
    # schedule
    "sched": ("str", "cosine"),
    "sched_on_updates": ("bool", False),
    "epochs": ("int", 300),
    "decay_milestones": ("ints", [90, 180, 270]),
    "decay_epochs": ("float", 90),
    "decay_rate": ("float", 0.1),
    "warmup_epochs": ("int", 5),
    "warmup_lr": ("float", 1e-5),
    "warmup_prefix": ("bool", False),
    "min_lr": ("float", 0.0),
    "cooldown_epochs": ("int", 0),
    "patience_epochs": ("int", 10),
    "lr_noise": ("floats", None),
    "lr_noise_pct": ("float", 0.67),
    "lr_noise_std": ("float", 1.0),
    "lr_cycle_mul": ("float", 1.0),
    "lr_cycle_decay": ("float", 0.5),
    "lr_cycle_limit": ("int", 1),
    "lr_k_decay": ("float", 1.0),
    # mixing and loss
    "mixup": ("float", 0.0),
    "cutmix": ("float", 0.0),
    "cutmix_minmax": ("floats", None),
    "mixup_prob": ("float", 1.0),
    "mixup_switch_prob": ("float", 0.5),
    "mixup_mode": ("str", "batch"),
    "mixup_off_epoch": ("int", 0),
    "mixup_on_epoch": ("int", 0),  # ours: mixing starts at this epoch (a warm-up without mixing)
    "mixup_on_train_top1": ("float", 0.0),  # ours: ... and not before an epoch's training top-1 reached this
    "smoothing": ("float", 0.1),
    # SAGE: sage_<option> for every SageConfig option (added below), and the mixer's seed
    "sage_seed": ("int", None),
    "sage_preset": ("str", None),  # fills the sage_* keys not given (timm_sage.config.SAGE_PRESETS)
    # precision, EMA, run
    "amp": ("bool", False),
    "amp_dtype": ("str", "float16"),
    "device": ("str", None),
    "torchcompile": ("str", None),  # torch.compile's backend (train.py's --torchcompile; inductor usually)
    "torchcompile_mode": ("str", None),
    "model_ema": ("bool", False),
    "model_ema_decay": ("float", 0.9998),
    "model_ema_warmup": ("bool", False),
    "seed": ("int", 42),
    "eval_interval": ("int", 1),
    "eval_train": ("bool", False),
    "output": ("str", ""),
    "experiment": ("str", ""),
    "resume": ("str", ""),
}

SUPPORTED.update(
    {f"scenes_{f.name}": (type(f.default).__name__, f.default) for f in dataclasses.fields(SceneParams)}
)  # the fashion_mnist_scenes generator's parameters (timm_sage.data.scenes)
SUPPORTED.update(
    {f"sage_{info.name}": (info.kind.__name__, info.default) for info in option_infos()}
)  # the names of timm_sage.plugin's and the launcher's --sage-* flags

# The default of sage_seed here (the plugin's differs: timm_sage.plugin.SEED_DEFAULT).
SAGE_SEED_DEFAULT = "the config's seed"

NEUTRAL = frozenset(
    {
        "config", "log_interval", "recovery_interval", "checkpoint_hist", "pin_mem", "no_prefetcher",
        "local_rank", "log_wandb", "wandb_project", "wandb_tags", "wandb_resume_id", "eval_metric",
        "worker_seeding", "synchronize_step", "use_multi_epochs_loader", "fuser", "amp_impl", "no_ddp_bb",
        "dist_bn", "model_ema_force_cpu", "save_images", "sync_bn", "device_modules", "tta",
        "grad_checkpointing", "fast_norm",
    }
)  # fmt: skip

# train.py keys this trainer does not implement, with train.py's default ("off") value.
DEFAULT_ONLY: dict[str, Any] = {
    "aa": None, "reprob": 0.0, "remode": "pixel", "recount": 1, "resplit": False, "aug_repeats": 0,
    "aug_splits": 0, "jsd_loss": False, "bce_loss": False, "bce_target_thresh": None, "bce_sum": False,
    "bce_pos_weight": None, "split_bn": False, "torchscript": False,
    "grad_accum_steps": 1, "no_resume_opt": False, "start_epoch": None, "epoch_repeats": 0.0,
    "head_init_scale": None, "head_init_bias": None, "vflip": 0.0, "scale": [0.08, 1.0],
    "ratio": [0.75, 1.3333333333333333], "color_jitter": 0.4, "color_jitter_prob": None,
    "grayscale_prob": None, "gaussian_blur_prob": None, "train_interpolation": "random",
    "interpolation": "", "crop_pct": None, "train_crop_mode": None, "kd_model_name": None,
    "kd_distill_type": None, "kd_loss_type": None, "naflex_loader": False, "model_dtype": None,
}  # fmt: skip

# Keys of train.py's ImageNet pipeline whose default values are not "off" but mean nothing for the
# in-memory pad-crop pipeline used here: at their default they are accepted silently.
_PIPELINE_DEFAULTS = ("scale", "ratio", "color_jitter", "train_interpolation", "interpolation")


class TrainConfig(dict):
    """A resolved config: every ``SUPPORTED`` key present; attribute access (``cfg.batch_size``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == "" or value == 0 or value == [] or value == {}


def _same(value: Any, default: Any) -> bool:
    if _is_off(value) and _is_off(default):
        return True
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == len(default) and all(
            isinstance(a, (int, float)) and math.isclose(float(a), float(b), rel_tol=1e-6)
            for a, b in zip(value, default, strict=True)
        )
    return value == default


def _coerce(key: str, kind: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the key's kind; ValueError naming the key on failure."""
    if value is None:
        return None
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "str":
            return str(value)
        if kind == "SearchSize":
            return SearchSize(value)
        if kind in ("ints", "floats", "int3"):
            items = value if isinstance(value, (list, tuple)) else [value]
            cast = int if kind in ("ints", "int3") else float
            out = [cast(item) for item in items]
            if kind == "int3" and len(out) != 3:
                raise ValueError(value)
            return out
        if kind == "dict":
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError):
        expected = {"int3": "three ints (C H W)", "ints": "a list of ints", "floats": "a list of numbers"}
        expected["SearchSize"] = "auto, none or an int"
        raise ValueError(f"{key}: expected {expected.get(kind, kind)}, got {value!r}") from None
    raise AssertionError(kind)  # pragma: no cover


def _normalise_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


_FLAG_ALIASES = {"b": "batch_size", "vb": "validation_batch_size", "j": "workers", "dr": "decay_rate"}


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``["--batch-size", "64", "--amp", "--input-size", "1", "28", "28"]`` -> ``{batch_size: "64", ...}``.

    Values stay strings (lists for several values, True for a bare flag); :func:`resolve_config` converts
    them by the key's kind. A token that is not a flag and follows no flag is a ValueError.
    """
    overrides: dict[str, Any] = {}
    key: str | None = None
    values: list[str] = []

    def flush() -> None:
        if key is not None:
            overrides[key] = True if not values else values[0] if len(values) == 1 else list(values)

    for token in tokens:
        is_flag = token.startswith("-") and not _looks_numeric(token)
        if is_flag:
            flush()
            name, _, inline = token.partition("=")
            key = _normalise_key(name)
            key = _FLAG_ALIASES.get(key, key)
            values = [inline] if inline else []
            if key.startswith("no_") and key not in SUPPORTED and key[3:] in SUPPORTED:
                overrides[key[3:]] = False
                key = None
        elif key is None:
            raise ValueError(f"unexpected argument {token!r}: overrides are --key value pairs")
        else:
            values.append(token)
    flush()
    return overrides


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def unsupported_keys(raw: Mapping[str, Any]) -> dict[str, str]:
    """Keys of ``raw`` that ``timm-sage train`` would reject, each with the reason."""
    problems: dict[str, str] = {}
    for key, value in raw.items():
        if key in SUPPORTED or key in NEUTRAL:
            continue
        if key in DEFAULT_ONLY:
            if not _same(value, DEFAULT_ONLY[key]):
                problems[key] = (
                    f"timm train.py option {key}={value!r} is not implemented by timm-sage train "
                    f"(only its default {DEFAULT_ONLY[key]!r} is accepted)"
                )
            continue
        problems[key] = f"unknown key {key!r}: not an option of timm-sage train nor of timm's train.py"
    return problems


def resolve_config(
    raw: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    ignore_unsupported: bool = False,
    source: str = "config",
) -> TrainConfig:
    """Merge ``raw`` (YAML) and ``overrides`` (CLI) over the defaults, check and convert every value.

    Raises:
        ValueError: an unknown or unsupported key (named), a value of the wrong kind, or a bad value.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source} must hold a mapping of train.py keys, got {type(raw).__name__}")
    merged = {_normalise_key(str(k)): v for k, v in raw.items()}
    for key, value in (overrides or {}).items():
        merged[_normalise_key(key)] = value
    problems = unsupported_keys(merged)
    if problems:
        listing = "; ".join(problems.values())
        if not ignore_unsupported:
            raise ValueError(
                f"{source}: {listing}. Remove these keys, or pass --ignore-unsupported to skip them"
            )
        warnings.warn(f"{source}: ignoring {sorted(problems)}: {listing}", UserWarning, stacklevel=2)
    cfg = TrainConfig({key: _copy(default) for key, (_, default) in SUPPORTED.items()})
    for key, value in merged.items():
        if key in SUPPORTED:
            cfg[key] = _coerce(key, SUPPORTED[key][0], value)
    if cfg.sage_preset is not None:
        _apply_sage_preset(cfg, merged, source)
    _check(cfg)
    return cfg


# The sage_* keys that are SageConfig fields (not sage_seed, sage_preset).
_SAGE_FIELD_KEYS = tuple(f"sage_{name}" for name in SageConfig.names())


def _apply_sage_preset(cfg: TrainConfig, given: Mapping[str, Any], source: str) -> None:
    """Fill the SageConfig keys of ``cfg`` from its ``sage_preset``: the keys in ``given`` (YAML and
    command line) keep their values, the others take the preset's (SageConfig.from_preset's rule)."""
    config = SageConfig.from_mapping(
        {key: cfg[key] for key in _SAGE_FIELD_KEYS if key in given},
        prefix="sage_",
        source=source,
        preset=cfg.sage_preset,
    )
    cfg.update({f"sage_{name}": value for name, value in config.as_dict().items()})


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _check(cfg: TrainConfig) -> None:
    if cfg.data and not cfg.data_dir:
        cfg.data_dir = cfg.data
    if cfg.dataset_download:
        raise ValueError("dataset_download: timm-sage train never downloads; put the dataset in data_dir")
    for key in ("epochs", "batch_size"):
        if cfg[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    for key in (
        "eval_interval",
        "validation_batch_size",
        "train_subset",
        "val_size",
        "img_size",
        "in_chans",
        "num_classes",
    ):
        if cfg[key] is not None and cfg[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    for key in (
        "mixup", "cutmix", "smoothing", "weight_decay", "warmup_epochs", "mixup_off_epoch", "mixup_on_epoch"
    ):
        if cfg[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {cfg[key]}")
    for key in ("mixup_prob", "mixup_switch_prob", "hflip", "smoothing"):
        if not 0 <= cfg[key] <= 1:
            raise ValueError(f"{key} must lie in [0, 1], got {cfg[key]}")
    if not 0 <= cfg.mixup_on_train_top1 < 100:
        raise ValueError(f"mixup_on_train_top1 must lie in [0, 100) (percent), got {cfg.mixup_on_train_top1}")
    if cfg.cutmix_minmax is not None and len(cfg.cutmix_minmax) != 2:
        raise ValueError(f"cutmix_minmax must be two numbers (min max), got {cfg.cutmix_minmax}")
    from timm_sage.mixup import MODES  # the mixer's own list (imported here: it brings torch)

    if cfg.mixup_mode not in MODES:
        raise ValueError(
            f"mixup_mode (--mixup-mode) must be one of {', '.join(MODES)}, got {cfg.mixup_mode!r}"
        )
    if cfg.mixup_mode == "sage" and cfg.mixup <= 0:
        raise ValueError("mixup must be > 0 with mixup_mode: sage (it is the Beta parameter of SAGE's prior)")
    if cfg.amp_dtype not in ("float16", "bfloat16"):
        raise ValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {cfg.amp_dtype!r}")
    if cfg.lr is not None and cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if list(cfg.decay_milestones) != sorted(cfg.decay_milestones):
        raise ValueError(f"decay_milestones must be increasing, got {cfg.decay_milestones}")
    if cfg.workers < 0:
        raise ValueError(f"workers must be >= 0, got {cfg.workers}")
    SceneParams(**{name: cfg[f"scenes_{name}"] for name in SceneParams.names()})
    # Every sage_* value, with SageConfig's rules and errors naming the key.
    SageConfig.from_mapping({k: cfg[k] for k in _SAGE_FIELD_KEYS}, prefix="sage_", source="config")
    if cfg.mixup_mode == "sage" and cfg.sage_saliency_model == "ema" and not cfg.model_ema:
        raise ValueError(
            "sage_saliency_model: ema takes SAGE's saliency from the model EMA, and this config keeps none; "
            "set model_ema: true (its decay: model_ema_decay), or sage_saliency_model: live"
        )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file (empty file: {}); FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with path.open() as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    ignore_unsupported: bool = False,
) -> TrainConfig:
    """Read ``path`` (train.py YAML, or None for defaults only) and apply command-line ``overrides``."""
    raw = read_yaml(path) if path is not None else {}
    parsed = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    return resolve_config(
        raw, parsed, ignore_unsupported=ignore_unsupported, source=str(path) if path else "config"
    )
