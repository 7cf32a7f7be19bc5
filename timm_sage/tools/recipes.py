"""``timm-sage recipe SOURCE -o OUT.yaml [--set key=value ...]``: a timm training recipe with SAGE on.

SOURCE is a YAML file (train.py's ``args.yaml`` format), a folder holding one of :data:`RECIPE_NAMES`, or
``hf-hub:ORG/REPO[@REVISION]`` whose file is fetched with ``huggingface_hub.hf_hub_download`` (from the
local cache when ``HF_HUB_OFFLINE=1``). The output is the same flat mapping with ``mixup_mode: sage`` and
``mixup`` kept (or 1.0 where mixing was off), so timm's train.py (through ``timm-sage-train``) reads it;
keys that ``timm-sage train`` would refuse are reported, with ``--ignore-unsupported`` as the way round.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RECIPE_NAMES", "add_arguments", "load_recipe", "parse_sets", "run", "sage_recipe", "write_recipe"]

RECIPE_NAMES = ("train_hparams.yaml", "args.yaml", "timm_training_args.yaml", "pretrain_hparams.yaml")
HUB_PREFIX = "hf-hub:"


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must hold a mapping of train.py keys, got {type(data).__name__}")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _from_hub(spec: str) -> tuple[dict[str, Any], str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = spec[len(HUB_PREFIX) :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"source: expected hf-hub:ORG/REPO[@REVISION], got {spec!r}")
    problems = []
    for name in RECIPE_NAMES:
        try:
            path = hf_hub_download(repo_id, name, revision=revision or None)
        except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError) as error:
            problems.append(f"{name}: {type(error).__name__}")
            continue
        except Exception as error:  # network and HTTP errors differ across huggingface_hub versions
            problems.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
            continue
        return _read_mapping(Path(path)), f"{spec} ({name})"
    raise FileNotFoundError(
        f"{spec}: no training recipe found; tried {', '.join(RECIPE_NAMES)} ({'; '.join(problems)}). "
        "Offline (HF_HUB_OFFLINE=1) only the local Hugging Face cache is read"
    )


def load_recipe(source: str | Path) -> tuple[dict[str, Any], str]:
    """The recipe mapping of ``source`` and where it came from (file path or hub file)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return _from_hub(text)
    path = Path(text)
    if path.is_dir():
        for name in RECIPE_NAMES:
            if (path / name).is_file():
                return _read_mapping(path / name), str(path / name)
        raise FileNotFoundError(f"source: folder {path} holds none of {', '.join(RECIPE_NAMES)}")
    if path.is_file():
        return _read_mapping(path), str(path)
    raise FileNotFoundError(f"source: {path} is neither a file, a folder nor hf-hub:ORG/REPO")


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["lr=0.1", "sage_upper_lambda=0.5"]`` -> ``{"lr": 0.1, ...}`` (values parsed as YAML)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        result[key.strip().lstrip("-").replace("-", "_")] = yaml.safe_load(value) if value else None
    return result


def sage_recipe(recipe: dict[str, Any], sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``recipe`` with SAGE switched on, then ``sets`` applied.

    ``mixup_mode`` becomes ``"sage"``; ``mixup`` (SAGE's Beta parameter) is kept when > 0, else 1.0.
    ``cutmix`` is kept: with both, each batch is CutMix or SAGE (``mixup_switch_prob``), as timm does
    for CutMix and mixup.
    """
    out = dict(recipe)
    alpha = out.get("mixup")
    try:
        alpha = float(alpha) if alpha is not None else 0.0
    except (TypeError, ValueError):
        raise ValueError(f"recipe: mixup must be a number, got {out.get('mixup')!r}") from None
    out["mixup"] = alpha if alpha > 0 else 1.0
    out["mixup_mode"] = "sage"
    out.update(sets or {})
    alpha_ok = isinstance(out.get("mixup"), (int, float)) and out["mixup"] > 0
    if out.get("mixup_mode") == "sage" and not alpha_ok:
        raise ValueError(f"mixup must be > 0 with mixup_mode: sage, got {out.get('mixup')!r}")
    return out


def write_recipe(path: str | Path, recipe: dict[str, Any], header: str = "") -> Path:
    """Write ``recipe`` as flat YAML, atomically (temporary file, then rename)."""
    from timm_sage._atomic import atomic_write_text

    text = yaml.safe_dump(recipe, default_flow_style=False, sort_keys=False)
    return atomic_write_text(path, header + text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="recipe YAML, a folder holding one, or hf-hub:ORG/REPO[@REVISION]")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.yaml", help="where to write the config")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key after switching SAGE on (repeatable), e.g. --set sage_upper_lambda=0.5",
    )


def run(args: argparse.Namespace) -> int:
    """Load, switch SAGE on, write; print which keys ``timm-sage train`` would not accept."""
    from timm_sage.train.config import unsupported_keys

    recipe, origin = load_recipe(args.source)
    result = sage_recipe(recipe, parse_sets(args.set))
    header = f"# SAGE config made by `timm-sage recipe` from {origin}\n"
    path = write_recipe(args.output, result, header)
    print(f"timm-sage recipe: wrote {path} (mixup_mode: sage, mixup: {result['mixup']}) from {origin}")
    problems = unsupported_keys(result)
    print(f"  timm's train.py:   timm-sage-train PATH/TO/train.py --config {path}")
    if problems:
        print(f"  timm-sage train:   refuses {len(problems)} key(s) unless --ignore-unsupported is given:")
        for reason in problems.values():
            print(f"    - {reason}")
        print(f"                     timm-sage train --config {path} --ignore-unsupported")
    else:
        print(f"  timm-sage train:   timm-sage train --config {path}")
    return 0
