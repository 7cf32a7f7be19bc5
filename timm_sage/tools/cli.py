"""``timm-sage``: the command line. Each subcommand lives in its own module, imported on use.

A subcommand module provides ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``; this file only routes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "timm_sage.train.command",
        "train a classifier with SAGE or a baseline mixing (timm-style YAML)",
    ),
    "configs": ("timm_sage.train.configs", "list the shipped training configs (or print one)"),
    "recipe": (
        "timm_sage.tools.recipes",
        "turn a timm recipe (file, folder, hf-hub:ORG/REPO) into a SAGE config",
    ),
    "saliency": ("timm_sage.data.cache", "compute a saliency cache for a dataset with a trained model"),
    "show": ("timm_sage.tools.show", "write PNG figures of SAGE mixes (needs the [viz] extra)"),
    "bench": ("timm_sage.tools.bench", "benchmark suites: mix, step, scale, memory"),
    "scenes": ("timm_sage.tools.scenes", "build the fashion_mnist_scenes set and draw samples with masks"),
    "study": ("timm_sage.tools.study", "train configs over several seeds and report mean and spread"),
    "agreement": (
        "timm_sage.tools.agreement",
        "how often a no-mixing model recognises the larger label share of mixed images",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (its options), the others are listed by name."""
    parser = argparse.ArgumentParser(prog="timm-sage", description="SAGE saliency-guided mixup for timm.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not module_name.startswith(error.name):
                raise
            sub.set_defaults(_unavailable=f"'{name}' is not available in this installation ({error})")
            continue
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.version:
        from timm_sage import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(f"timm-sage: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        importlib.import_module("timm_sage.models")  # every subcommand may build the CIFAR networks by name
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"timm-sage {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"timm-sage {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
