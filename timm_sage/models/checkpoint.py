"""Loading model weights from the checkpoints users have: ``timm-sage train``'s, timm's, bare state dicts
and ``.safetensors``, without unpickling arbitrary objects (``weights_only`` with an allow-list)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn


def build_model(
    name: str | None,
    in_chans: int,
    num_classes: int,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    default: str | None = None,
) -> nn.Module:
    """A timm model for ``in_chans`` x ``num_classes`` inputs, loaded from ``checkpoint`` when given.

    ``checkpoint``: a ``timm-sage train`` or timm checkpoint (a dict with ``state_dict``, ``model``,
    ``state_dict_ema`` or ``model_state``; the architecture is read from ``arch``/``model_name``/``model``
    or ``config["model"]``/``args.model`` when ``name`` is None), a bare state dict, or ``.safetensors``.
    Initialisation draws from ``seed``. Raises ValueError for an unknown name or a mismatched checkpoint.
    """
    import timm

    state, stored_name = load_state(Path(checkpoint)) if checkpoint is not None else (None, None)
    name = name or stored_name or default
    if name is None:
        raise ValueError("model: no name given and none stored in the checkpoint; pass --model NAME")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes)
        except RuntimeError as error:
            raise ValueError(f"model {name!r} is not a timm model name: {error}") from error
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(
                f"checkpoint {checkpoint} does not fit model {name!r} with in_chans={in_chans}, "
                f"num_classes={num_classes} (pass --model NAME?): {str(error).splitlines()[0]}"
            ) from error
    return model


def _numpy_safe_globals() -> list:
    """What a checkpoint holding numpy arrays (e.g. ``np.random.get_state()``) needs with weights_only."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    kinds = (np.uint8, np.uint32, np.int32, np.int64, np.float32, np.float64, np.bool_)
    return [_reconstruct, np.ndarray, np.dtype, *{type(np.dtype(kind)) for kind in kinds}]


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    from timm.models import clean_state_dict

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return clean_state_dict(load_file(str(path))), None
    with torch.serialization.safe_globals([argparse.Namespace, *_numpy_safe_globals()]):
        raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise ValueError(f"checkpoint {path} must hold a dict, got {type(raw).__name__}")
    names = [raw.get(key) for key in ("arch", "model_name", "model")]
    for key in ("config", "args"):
        nested = vars(raw[key]) if isinstance(raw.get(key), argparse.Namespace) else raw.get(key)
        names.append(nested.get("model") if isinstance(nested, dict) else None)
    name = next((n for n in names if isinstance(n, str)), None)
    for key in ("state_dict", "model", "state_dict_ema", "model_state"):
        if isinstance(raw.get(key), dict):
            return clean_state_dict(raw[key]), name
    if raw and all(isinstance(value, torch.Tensor) for value in raw.values()):
        return clean_state_dict(raw), name
    raise ValueError(f"checkpoint {path} holds no state dict (keys: {sorted(raw)[:8]})")
