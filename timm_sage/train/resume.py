"""``timm-sage train --resume RUN/`` (or ``RUN/last.pth.tar``): continue a run with its own settings.

The run's settings come from its checkpoint (``args``, every resolved key) or, failing that, from the
``args.yaml`` beside it; the run continues in the checkpoint's folder, whatever the current directory.
``--config`` is optional on resume: every key given again (in the config file or on the command line)
must agree with the run's, or the resume is refused with a ValueError naming them. Only ``epochs``
(:data:`CHANGEABLE`) may change: the run then trains to the new total, its learning-rate schedule rebuilt
for the new length.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from timm_sage.train.config import SUPPORTED, TrainConfig, _normalise_key, read_yaml, resolve_config

__all__ = ["CHANGEABLE", "checkpoint_path", "resume_config", "run_settings"]

CHANGEABLE = ("epochs",)  # keys a resumed run may change
PATH_KEYS = ("data_dir", "data", "initial_checkpoint", "class_map")  # compared as absolute paths


def checkpoint_path(resume: str | os.PathLike) -> Path:
    """``RUN/`` -> ``RUN/last.pth.tar``; a file stays as it is. FileNotFoundError naming what is missing."""
    path = Path(resume).expanduser()
    if path.is_dir():
        if not (path / "last.pth.tar").is_file():
            raise FileNotFoundError(f"resume: the folder {path} holds no last.pth.tar")
        path = path / "last.pth.tar"
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} does not exist (give a run folder or its last.pth.tar)")
    return path.resolve()


def run_settings(checkpoint: Path) -> dict[str, Any]:
    """The run's resolved keys: the checkpoint's ``args``, else the ``args.yaml`` beside it."""
    return _read(checkpoint)[0]


def _read(checkpoint: Path) -> tuple[dict[str, Any], int]:
    """(the run's resolved keys, the epochs its checkpoint has done)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # an older checkpoint (numpy RNG state): load it the long way
        from timm_sage.train.outputs import load_checkpoint

        state = load_checkpoint(checkpoint)
    except RuntimeError as error:
        raise ValueError(f"resume: {checkpoint} is not a readable checkpoint: {error}") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"resume: {checkpoint} is not a timm-sage train checkpoint")
    done = int(state["epoch"])
    if isinstance(state.get("args"), dict):
        return dict(state["args"]), done
    args_file = checkpoint.parent / "args.yaml"
    if args_file.is_file():
        return read_yaml(args_file), done
    raise ValueError(
        f"resume: {checkpoint} stores no settings and {args_file} does not exist; "
        "is it a timm-sage train checkpoint?"
    )


def _agrees(key: str, given: Any, run: Any) -> bool:
    if given is None:  # "derive it" (num_classes, lr, input_size, ...): the run's derived value stands
        return True
    if key in PATH_KEYS and isinstance(given, str) and isinstance(run, str):
        return given == run or (bool(given) and bool(run) and os.path.abspath(given) == os.path.abspath(run))
    if isinstance(given, list) and isinstance(run, list):
        if len(given) == 1 and len(run) > 1:  # one value for every channel (mean, std)
            given = given * len(run)
        return len(given) == len(run) and all(_agrees(key, a, b) for a, b in zip(given, run, strict=True))
    if isinstance(given, float) and isinstance(run, (int, float)) and not isinstance(run, bool):
        return math.isclose(given, float(run), rel_tol=1e-9, abs_tol=1e-12)
    return given == run


def resume_config(
    resume: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    config_name: str = "--config",
    ignore_unsupported: bool = False,
) -> TrainConfig:
    """The resumed run's config: its own settings, ``epochs`` from ``overrides`` when given there.

    Args:
        resume: the run folder or its checkpoint.
        config: the keys of a ``--config`` file given again, or None.
        overrides: the command-line keys (train.py flag names).

    Raises:
        ValueError: a key of ``config`` or ``overrides`` that differs from the run's (all of them named),
            or ``epochs`` changed in the config file (change it on the command line).
    """
    checkpoint = checkpoint_path(resume)
    settings, done = _read(checkpoint)
    stored = {_normalise_key(str(k)): v for k, v in settings.items()}
    source = f"resume: {checkpoint.parent}"
    run = resolve_config(stored, ignore_unsupported=True, source=source)
    given_file = {_normalise_key(str(k)): v for k, v in (config or {}).items()}
    given_cli = {_normalise_key(str(k)): v for k, v in (overrides or {}).items()}
    given_cli.pop("resume", None)
    given_file.pop("resume", None)
    merged = resolve_config(stored, {**given_file, **given_cli}, ignore_unsupported=ignore_unsupported)
    folder = checkpoint.parent
    conflicts = []
    given = {**{key: config_name for key in given_file}, **{key: "command line" for key in given_cli}}
    for key, origin in given.items():
        if key not in SUPPORTED or (key in CHANGEABLE and origin == "command line"):
            continue
        value = merged[key]
        if key in ("output", "experiment"):
            if origin != "command line":
                continue  # a config file's output folder: the run's folder comes from --resume
            if key == "output":
                run_value = str(folder.parent)
                ok = os.path.abspath(value or os.path.join("output", "train")) == run_value
            else:
                run_value = folder.name
                ok = value in ("", folder.name)
        else:
            ok, run_value = _agrees(key, value, run[key]), run[key]
        if not ok:
            conflicts.append(f"{key}={value!r} ({origin}; the run has {run_value!r})")
    if conflicts:
        raise ValueError(
            f"{source}: options differ from the run's: {'; '.join(conflicts)}. A resumed run keeps its "
            f"settings: leave these out (timm-sage train --resume {folder}/ restores them), or start a "
            "new run. Only --epochs may change on resume."
        )
    if "epochs" in given_cli and merged.epochs < done:
        raise ValueError(f"{source}: epochs={merged.epochs} is fewer than the {done} epochs the run has done")
    changes = {key: given_cli[key] for key in CHANGEABLE if key in given_cli}
    return resolve_config(
        stored, {**changes, "resume": str(checkpoint)}, ignore_unsupported=True, source=source
    )
