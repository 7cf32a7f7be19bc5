"""The shipped training configs: ``timm-sage configs`` lists them; ``--config NAME`` finds one by name.

The repository's ``train_configs/`` is the only copy: the wheel carries it as ``timm_sage/train_configs/``
(``pyproject.toml`` maps the folder into the package), and a source checkout reads it in place.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_arguments", "config_folder", "describe", "find_config", "packaged_configs", "run"]

_PACKAGE = Path(__file__).resolve().parents[1]
_SUFFIXES = (".yaml", ".yml")


def config_folder() -> Path | None:
    """Where the shipped configs are: in the installed package, else in the source checkout."""
    for folder in (_PACKAGE / "train_configs", _PACKAGE.parent / "train_configs"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def packaged_configs() -> dict[str, Path]:
    """Config name (file name less ``.yaml``) -> path, sorted by name."""
    folder = config_folder()
    if folder is None:
        return {}
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix in _SUFFIXES}


def find_config(spec: str | os.PathLike) -> Path:
    """``spec`` as a file path if such a file exists, else a shipped config's name (``.yaml`` optional).

    Raises:
        FileNotFoundError: neither a file nor a shipped config; the message lists the names.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = packaged_configs()
    text = str(spec)
    name = text[: -len(path.suffix)] if path.suffix in _SUFFIXES else text
    if name in shipped:
        return shipped[name]
    if "/" in text or os.sep in text:
        raise FileNotFoundError(f"config file {path} does not exist")
    listing = ", ".join(shipped) or "none found in this installation"
    raise FileNotFoundError(
        f"config {text!r} is neither a file nor a shipped config (shipped: {listing}; "
        "`timm-sage configs` describes them)"
    )


def describe(path: Path) -> str:
    """The first comment line of a config, without its ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        default=None,
        help="print this config's YAML (to copy and edit) instead of the list",
    )
    parser.epilog = "Train with one: timm-sage train --config NAME (a file path works too)."


def run(args: argparse.Namespace) -> int:
    """Print one line per shipped config (name, description), or one config's text; returns 0."""
    if args.name is not None:
        path = find_config(args.name)
        print(path.read_text(), end="")
        return 0
    shipped = packaged_configs()
    if not shipped:
        raise FileNotFoundError("no shipped configs found in this installation")
    width = max(len(name) for name in shipped)
    for name, path in shipped.items():
        print(f"{name:<{width}}  {describe(path)}")
    return 0
