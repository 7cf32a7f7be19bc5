"""The training configs: ``timm-sage configs`` lists them; ``--config NAME`` finds one by name.

Two kinds. The recipes a user runs (the paper's CIFAR recipes, the main job, the ImageNet-scale ones) lie
in the repository's ``train_configs/``, the only copy: the wheel carries it as ``timm_sage/train_configs/``
(``pyproject.toml`` maps the folder into the package), and a source checkout reads it in place. The
configs of a study lie beside that study's record, in ``docs/studies/STUDY/configs/*.yaml`` of a source
checkout (any study folder that has one; not in the wheel): listed under their own heading, found by
name as well, and run over seeds by ``timm-sage study``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = [
    "add_arguments",
    "config_folder",
    "describe",
    "find_config",
    "packaged_configs",
    "run",
    "study_configs",
]

_PACKAGE = Path(__file__).resolve().parents[1]
_SUFFIXES = (".yaml", ".yml")
STUDIES = _PACKAGE.parent / "docs" / "studies"  # in a source checkout


def config_folder() -> Path | None:
    """Where the shipped configs are: in the installed package, else in the source checkout."""
    for folder in (_PACKAGE / "train_configs", _PACKAGE.parent / "train_configs"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def _configs_in(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix in _SUFFIXES}


def packaged_configs() -> dict[str, Path]:
    """The recipes: config name (file name less ``.yaml``) -> path, sorted by name."""
    folder = config_folder()
    return {} if folder is None else _configs_in(folder)


def study_configs(studies: Path | None = None) -> dict[str, dict[str, Path]]:
    """Study name -> {config name: path} for every ``STUDY/configs/`` folder under ``studies`` (default:
    the checkout's ``docs/studies``), sorted; empty in an installed wheel."""
    root = STUDIES if studies is None else Path(studies)
    if not root.is_dir():
        return {}
    found = {}
    for folder in sorted(root.glob("*/configs")):
        configs = _configs_in(folder) if folder.is_dir() else {}
        if configs:
            found[folder.parent.name] = configs
    return found


def find_config(spec: str | os.PathLike) -> Path:
    """``spec`` as a file path if such a file exists, else a recipe's or a study config's name (``.yaml``
    optional; the recipes first).

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
    for configs in study_configs().values():
        if name in configs:
            return configs[name]
    if "/" in text or os.sep in text:
        raise FileNotFoundError(f"config file {path} does not exist")
    listing = ", ".join(shipped) or "none found in this installation"
    studies = ", ".join(study_configs())
    raise FileNotFoundError(
        f"config {text!r} is neither a file nor a shipped config (shipped: {listing}"
        + (f"; and the configs of the studies {studies}" if studies else "")
        + "; `timm-sage configs` describes them)"
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
    parser.epilog = (
        "Train with one: timm-sage train --config NAME (a file path works too). The recipes come first; the "
        "configs of each study (docs/studies/STUDY/configs/ of a source checkout) follow under its name."
    )


def run(args: argparse.Namespace) -> int:
    """Print one line per recipe (name, description), then each study's configs under its heading, or one
    config's text; returns 0."""
    if args.name is not None:
        path = find_config(args.name)
        print(path.read_text(), end="")
        return 0
    shipped = packaged_configs()
    studies = study_configs()
    if not shipped and not studies:
        raise FileNotFoundError("no shipped configs found in this installation")
    width = max(len(name) for configs in [shipped, *studies.values()] for name in configs)
    print("Recipes:")
    for name, path in shipped.items():
        print(f"  {name:<{width}}  {describe(path)}")
    for study, configs in studies.items():
        folder = next(iter(configs.values())).parent
        try:
            shown = folder.relative_to(Path.cwd())
        except ValueError:
            shown = folder
        print(f"\nStudy {study} ({shown}/; timm-sage study runs them over seeds):")
        for name, path in configs.items():
            print(f"  {name:<{width}}  {describe(path)}")
    return 0
