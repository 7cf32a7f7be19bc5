"""``timm-sage-train``: run timm's ``train.py`` (from a clone of pytorch-image-models) with SAGE.

Usage::

    timm-sage-train PATH/TO/train.py <train.py arguments> --mixup 1.0 --mixup-mode sage [--sage-* options]

The launcher loads ``train.py`` with ``importlib.util.spec_from_file_location`` under the module name
``__timm_sage_train__`` (not ``__main__``, so its ``if __name__ == "__main__"`` block does not run), adds
the ``--sage-*`` flags to its module-level ``parser``, sets ``sys.argv`` and calls its ``main()``.
``--sage-*`` flags default to None, so ``sage_*`` keys of a ``--config`` YAML (applied by train.py with
``parser.set_defaults``) fill them, and the command line wins over the YAML, as for every train.py flag.
When ``main()`` parses its arguments, :func:`timm_sage.plugin.install` patches train.py's globals (the
same code path as ``--device-modules timm_sage.plugin``; see that module for how the mixing works).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from timm_sage import plugin

__all__ = [
    "MODULE_NAME",
    "NotATrainScript",
    "add_sage_arguments",
    "load_train_script",
    "main",
    "run",
    "sage_help",
]

MODULE_NAME = "__timm_sage_train__"


def _usage() -> str:
    """The usage line, with one ``[--sage-NAME V]`` per option of :data:`timm_sage.plugin.SAGE_OPTIONS`."""
    flags = []
    for name, (kind, choices, _) in plugin.SAGE_OPTIONS.items():
        value = "{" + ",".join(choices) + "}" if choices else ("N" if kind is int else "X")
        flags.append(f"[--sage-{name.replace('_', '-')} {value}]")
    return (
        "usage: timm-sage-train PATH/TO/train.py [train.py arguments] --mixup 1.0 --mixup-mode sage "
        + " ".join(flags)
    )


USAGE = _usage()


def add_sage_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--sage-<option>`` (dest ``sage_<option>``, default None) for every SAGE option."""
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"parser must be an argparse.ArgumentParser, got {type(parser).__name__}")
    group = parser.add_argument_group("SAGE (timm_sage; with --mixup-mode sage)")
    for name, (kind, choices, help_text) in plugin.SAGE_OPTIONS.items():
        group.add_argument(
            f"--sage-{name.replace('_', '-')}",
            dest=f"sage_{name}",
            type=kind,
            choices=choices,
            default=None,
            metavar=None if choices else ("N" if kind is int else "X"),
            help=help_text,
        )


def sage_help() -> str:
    """The help of the ``--sage-*`` flags (meaning, default, where the default comes from), as
    ``timm-sage-train --help`` and train.py's own ``--help`` under the launcher show them."""
    parser = argparse.ArgumentParser(prog="timm-sage-train", usage=argparse.SUPPRESS, add_help=False)
    add_sage_arguments(parser)
    return parser.format_help()


def load_train_script(path: str | Path) -> ModuleType:
    """Execute a training script as module ``__timm_sage_train__`` and return it (``main()`` not run).

    The script's folder goes first on ``sys.path``, as when Python runs the script itself.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"train script not found: {path}")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


class NotATrainScript(ValueError):
    """The script has no module-level argparse ``parser`` or no ``main()``."""


def _check_script(module: ModuleType) -> argparse.ArgumentParser:
    parser = getattr(module, "parser", None)
    if not isinstance(parser, argparse.ArgumentParser) or not callable(getattr(module, "main", None)):
        raise NotATrainScript(
            f"{module.__file__} does not look like timm's train.py: it needs a module-level argparse "
            "'parser' and a main() function"
        )
    return parser


def run(path: str | Path, argv: Sequence[str]) -> ModuleType:
    """Load ``path``, add the ``--sage-*`` flags, install the plugin at parse time, run ``main()``.

    Returns:
        The script's module after ``main()`` returned (its globals hold the plugin's state under
        :data:`timm_sage.plugin.STATE_KEY` when SAGE was installed).
    """
    module = load_train_script(path)
    parser = _check_script(module)
    add_sage_arguments(parser)
    parse_args = parser.parse_args

    def parse_and_install(*args: Any, **kwargs: Any) -> argparse.Namespace:
        parsed = parse_args(*args, **kwargs)
        try:
            plugin.install(vars(module), parsed)
        except (TypeError, ValueError) as error:
            parser.error(str(error))
        return parsed

    parser.parse_args = parse_and_install  # type: ignore[method-assign]
    saved_argv = sys.argv
    sys.argv = [str(module.__file__), *argv]
    try:
        module.main()
    finally:
        sys.argv = saved_argv
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``timm-sage-train PATH/TO/train.py [arguments]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__)
        print(sage_help())
        return 0 if argv else 2
    try:
        run(argv[0], argv[1:])
    except (FileNotFoundError, NotATrainScript) as error:
        print(f"timm-sage-train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
