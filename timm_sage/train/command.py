"""``timm-sage train --config FILE.yaml [--key value ...]``: train with a timm train.py-style config.

Any key of the config can be overridden on the command line with train.py's flag spelling
(``--batch-size 64``, ``--input-size 1 28 28``, ``--amp``, ``--no-aug``) or the YAML spelling
(``--batch_size 64``). Unknown keys are errors that name them.
"""

from __future__ import annotations

import argparse
import sys

from timm_sage.train.config import DEFAULT_ONLY, NEUTRAL, SUPPORTED, TrainConfig, load_config

_DEST = "cfg__"

__all__ = ["add_arguments", "config_from_args", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE.yaml",
        help="timm train.py-style YAML config (e.g. train_configs/fashion_mnist_sage.yaml)",
    )
    parser.add_argument(
        "--ignore-unsupported",
        action="store_true",
        help="warn about and skip train.py keys this trainer does not implement, instead of failing",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    group = parser.add_argument_group(
        "config keys", "any key of the config, in train.py's flag spelling, overrides the YAML value"
    )
    aliases = {"batch_size": ["-b"], "validation_batch_size": ["-vb"], "workers": ["-j"]}
    aliases["decay_rate"] = ["--dr"]
    for key in sorted({*SUPPORTED, *DEFAULT_ONLY, *NEUTRAL} - {"config"}):
        flags = dict.fromkeys([*aliases.get(key, []), "--" + key.replace("_", "-"), "--" + key])
        group.add_argument(*flags, dest=_DEST + key, nargs="*", default=argparse.SUPPRESS, metavar="V")
    parser.usage = "timm-sage train [-h] [-c FILE.yaml] [--ignore-unsupported] [--no-progress] [--KEY V ...]"
    parser.epilog = (
        "Outputs land in OUTPUT/EXPERIMENT (default output/train/<date>-<model>-<size>): args.yaml, "
        "metrics.csv, metrics.jsonl, summary.json, last.pth.tar, mixed_batch.png, curves.png. "
        "Continue a stopped run with --resume OUTPUT/EXPERIMENT/last.pth.tar."
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config: ``--config`` YAML with the command-line keys over it."""
    overrides = {
        name[len(_DEST) :]: True if not value else value[0] if len(value) == 1 else value
        for name, value in vars(args).items()
        if name.startswith(_DEST)
    }
    return load_config(args.config, overrides, ignore_unsupported=args.ignore_unsupported)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, train, print where the outputs are; returns 0."""
    from timm_sage.train.session import Trainer

    cfg = config_from_args(args)
    trainer = Trainer(cfg, progress=not args.no_progress)
    print(
        f"timm-sage train: {cfg.model} ({trainer.param_count / 1e6:.2f} M params) "
        f"on {cfg.dataset or 'folder'} "
        f"{tuple(cfg.input_size)}: {len(trainer.train_data)} train / {len(trainer.test_data)} test images, "
        f"{trainer.num_epochs} epochs of {len(trainer.train_loader)} batches, mixing "
        f"{cfg.mixup_mode if trainer.mixer is not None else 'off'}, device {trainer.device}"
        + (f", resuming at epoch {trainer.start_epoch + 1}" if cfg.resume else ""),
        flush=True,
    )
    summary = trainer.fit()
    folder = trainer.output_dir
    print(
        f"timm-sage train: done in {summary['wall_time_s']:.0f} s: "
        f"final test top-1 {summary['final_top1']:.2f}% "
        f"(best {summary['best_top1']:.2f}% at epoch {summary['best_epoch']})\n"
        f"outputs in {folder}/: summary.json, metrics.csv, metrics.jsonl, args.yaml, last.pth.tar, "
        f"curves.png" + (", mixed_batch.png" if (folder / "mixed_batch.png").is_file() else ""),
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timm-sage train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
