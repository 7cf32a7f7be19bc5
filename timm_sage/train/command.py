"""``timm-sage train --config FILE.yaml|NAME [--key value ...]``: train with a timm train.py-style config.

Any key of the config can be overridden on the command line with train.py's flag spelling
(``--batch-size 64``, ``--input-size 1 28 28``, ``--amp``, ``--no-aug``) or the YAML spelling
(``--batch_size 64``). Unknown keys are errors that name them. ``--config`` takes a file or the name of
a shipped config (``timm-sage configs``). ``--resume RUN/`` continues a run with its own settings in its
own folder (:mod:`timm_sage.train.resume`); Ctrl-C leaves a checkpoint and prints the resume command.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
import textwrap
from collections.abc import Sequence

from timm_sage.config import PRESET_HELP, SAGE_PRESETS, SEED_HELP, option_help, option_infos
from timm_sage.train.config import (
    DEFAULT_ONLY,
    NEUTRAL,
    SAGE_SEED_DEFAULT,
    SUPPORTED,
    TrainConfig,
    _normalise_key,
    load_config,
    read_yaml,
)
from timm_sage.train.configs import find_config
from timm_sage.train.key_help import key_help
from timm_sage.train.resume import resume_config

_DEST = "cfg__"
_OUTPUTS = (
    "summary.json", "metrics.csv", "metrics.jsonl", "args.yaml", "last.pth.tar", "curves.png",
    "mixed_batch.png",
)  # fmt: skip

__all__ = ["add_arguments", "config_from_args", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE.yaml|NAME",
        help="timm train.py-style YAML config: a file, or a shipped config's name (timm-sage configs), "
        "e.g. fashion_mnist_sage; optional with --resume",
    )
    parser.add_argument(
        "--ignore-unsupported",
        action="store_true",
        help="warn about and skip train.py keys this trainer does not implement, instead of failing",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    sage = parser.add_argument_group(
        "SAGE options (sage_* keys, used with mixup_mode: sage)",
        "each overrides the config's sage_* key; the same names, defaults and rules as the --sage-* flags "
        "of timm's train.py under timm_sage (timm-sage-train --help), but for sage_seed's default",
    )
    sage_help = {f"sage_{info.name}": (info, option_help(info)) for info in option_infos()}
    sage_help["sage_seed"] = (None, f"{SEED_HELP} (default {SAGE_SEED_DEFAULT})")
    sage_help["sage_preset"] = (None, f"{PRESET_HELP} (default None: SageConfig's defaults)")
    for key, (info, help_text) in sage_help.items():
        metavar = "N" if info is None or info.kind is int else "X"
        if info is not None and info.choices:
            metavar = "{" + ",".join(info.choices) + "}"
        elif key == "sage_preset":
            metavar = "{" + ",".join(SAGE_PRESETS) + "}"
        sage.add_argument(
            "--" + key.replace("_", "-"), dest=_DEST + key, default=argparse.SUPPRESS, metavar=metavar,
            help=help_text,
        )  # fmt: skip
        # the YAML spelling works too, as for every key; listed once, above
        sage.add_argument("--" + key, dest=_DEST + key, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    group = parser.add_argument_group(
        "config keys",
        "any key of the config, in train.py's flag spelling (or the YAML one, --batch_size), overrides the "
        "YAML value",
    )
    aliases = {"batch_size": ["-b"], "validation_batch_size": ["-vb"], "workers": ["-j"]}
    aliases["decay_rate"] = ["--dr"]
    neutral = sorted(NEUTRAL - {"config"})
    groups = {
        key: group for key in SUPPORTED if not key.startswith("sage_")
    } | _listed_group(parser, neutral, key_help("", neutral=True)) | _listed_group(
        parser, sorted(DEFAULT_ONLY), key_help("", default_only=True)
    )  # fmt: skip
    for key in sorted(groups):
        flags = [*aliases.get(key, []), "--" + key.replace("_", "-")]
        listed = groups[key] is group
        text = key_help(key, SUPPORTED[key][1]) if listed else argparse.SUPPRESS
        groups[key].add_argument(
            *flags, dest=_DEST + key, nargs="*", default=argparse.SUPPRESS, metavar="V", help=text
        )
        if "--" + key not in flags:  # the YAML spelling works too; listed once, above
            groups[key].add_argument(
                "--" + key, dest=_DEST + key, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
    parser.formatter_class = _HelpFormatter
    parser.usage = (
        "timm-sage train [-h] [-c FILE.yaml] [--ignore-unsupported] [--no-progress] [--sage-KEY V ...] "
        "[--KEY V ...]"
    )
    parser.epilog = (
        "Outputs land in OUTPUT/EXPERIMENT (default output/train/<date>-<model>-<size>; a folder that holds "
        "an earlier run is never reused: EXPERIMENT-1, EXPERIMENT-2, ... follow): args.yaml, "
        "metrics.csv, metrics.jsonl, summary.json, last.pth.tar, mixed_batch.png, curves.png. "
        "Continue a stopped run with --resume OUTPUT/EXPERIMENT/ (its settings and folder are the run's; "
        "only --epochs may change)."
    )


def _listed_group(
    parser: argparse.ArgumentParser, keys: list[str], description: str
) -> dict[str, argparse._ArgumentGroup]:
    """A help group that names ``keys``' flags in its description (one line each would say the same)."""
    flags = ", ".join("--" + key.replace("_", "-") for key in keys)
    section = parser.add_argument_group(description, flags)
    return dict.fromkeys(keys, section)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, wrapping lines at spaces only (a flag such as --pin-mem stays whole)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = self._whitespace_matcher.sub(" ", text).strip()
        lines = textwrap.wrap(text, width - len(indent), break_on_hyphens=False)
        return "\n".join(indent + line for line in lines)


def _flag_value(value: str | list[str]) -> str | list[str] | bool:
    """A flag's value as the config reads it: a bare flag is true, one value a string, several a list."""
    if isinstance(value, str):
        return value
    return True if not value else value[0] if len(value) == 1 else value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config: ``--config`` YAML with the command-line keys over it; with ``--resume``, the
    run's own settings (keys given again must agree, ``--epochs`` may change)."""
    overrides = {
        name[len(_DEST) :]: _flag_value(value) for name, value in vars(args).items() if name.startswith(_DEST)
    }
    path = find_config(args.config) if args.config is not None else None
    raw = read_yaml(path) if path is not None else None
    resume = overrides.get("resume") or next(
        (value for key, value in (raw or {}).items() if _normalise_key(str(key)) == "resume"), None
    )
    if isinstance(resume, str) and resume:
        return resume_config(
            resume,
            raw,
            overrides,
            config_name=f"--config {args.config}",
            ignore_unsupported=args.ignore_unsupported,
        )
    cfg = load_config(path, overrides, ignore_unsupported=args.ignore_unsupported)
    for key in ("data_dir", "data", "initial_checkpoint", "class_map"):  # a resume from elsewhere finds them
        if cfg[key] and os.path.exists(cfg[key]):
            cfg[key] = os.path.abspath(cfg[key])
    return cfg


def similar_model_names(name: str, known: Sequence[str], limit: int = 5) -> list[str]:
    """Up to ``limit`` names of ``known`` closest to ``name``, compared without case, ``_`` and ``-`` (so
    ``resnet_18`` finds ``resnet18``), closest first (difflib's ratio)."""

    def key(text: str) -> str:
        return text.split(".")[0].lower().replace("_", "").replace("-", "")

    by_key: dict[str, list[str]] = {}
    for candidate in known:
        by_key.setdefault(key(candidate), []).append(candidate)
    close = difflib.get_close_matches(key(name), list(by_key), n=limit, cutoff=0.6) if name else []
    return [candidate for match in close for candidate in by_key[match]][:limit]


def check_model_and_device(cfg: TrainConfig) -> None:
    """ValueError naming ``model`` or ``device`` before anything is built (no traceback from timm/torch)."""
    import timm
    import torch

    import timm_sage.models  # noqa: F401  (registers the CIFAR networks)

    name = cfg.model
    if ":" not in name and not timm.is_model(name):
        close = similar_model_names(name, timm.list_models())
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"model: {name!r} is not a timm model name (timm.list_models() lists them){hint}")
    if cfg.device is None:
        return
    try:
        device = torch.device(cfg.device)
    except RuntimeError as error:
        raise ValueError(f"device: {cfg.device!r} is not a torch device ({error})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device: {cfg.device!r} asked for, but no CUDA GPU is available to torch "
                f"(torch {torch.__version__}); use --device cpu or leave device unset"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(f"device: {cfg.device!r} asked for, but there are only {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {cfg.device!r} asked for, but MPS is not available; use --device cpu")


def _interrupted(stop) -> str:
    saved = "the start of training" if stop.epochs_saved == 0 else f"the end of epoch {stop.epochs_saved}"
    lost = (
        f"; the finished steps of epoch {stop.epoch} are not in it"
        if stop.epoch > stop.epochs_saved and stop.epochs_saved < stop.num_epochs
        else ""
    )
    checkpoint = os.path.abspath(stop.checkpoint)
    folder = shlex.quote(os.path.dirname(checkpoint) + os.sep)
    return (
        f"timm-sage train: interrupted (Ctrl-C) in epoch {stop.epoch}/{stop.num_epochs}. "
        f"Checkpoint {checkpoint} holds {saved}{lost}.\n"
        f"Resume with: timm-sage train --resume {folder}"
    )


def run(args: argparse.Namespace) -> int:
    """Resolve the config, train, print where the outputs are; returns 0 (130 after Ctrl-C)."""
    from timm_sage.train.session import TrainingInterrupted

    cfg = config_from_args(args)
    check_model_and_device(cfg)
    try:
        return _train(cfg, args)
    except TrainingInterrupted as stop:
        print(_interrupted(stop), file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print("timm-sage train: interrupted (Ctrl-C) before training started", file=sys.stderr)
        return 130


def _train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    from timm_sage.train.session import Trainer

    trainer = Trainer(cfg, progress=not args.no_progress)
    print(
        f"timm-sage train: {cfg.model} ({trainer.param_count / 1e6:.2f} M params) "
        f"on {cfg.dataset or 'folder'} "
        f"{tuple(cfg.input_size)}: {len(trainer.train_data)} train / {len(trainer.test_data)} test images, "
        f"{trainer.num_epochs} epochs of {len(trainer.train_loader)} batches, mixing "
        f"{cfg.mixup_mode if trainer.mixer is not None else 'off'}, device {trainer.device}"
        + (f", resuming at epoch {trainer.start_epoch + 1}" if cfg.resume else "")
        + f"; writing to {trainer.output_dir}/",
        flush=True,
    )
    summary = trainer.fit()
    folder = trainer.output_dir
    print(
        f"timm-sage train: done in {summary['wall_time_s']:.0f} s: "
        f"final test top-1 {summary['final_top1']:.2f}% "
        + (
            f"(validation: final {summary['final_val_top1']:.2f}%, best {summary['best_val_top1']:.2f}% at "
            f"epoch {summary['best_val_epoch']})\n"
            if summary.get("final_val_top1") is not None
            else f"(best {summary['best_top1']:.2f}% at epoch {summary['best_epoch']})\n"
        )
        + f"outputs in {folder}/: "
        + ", ".join(name for name in _OUTPUTS if (folder / name).is_file()),
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timm-sage train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
