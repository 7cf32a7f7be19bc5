"""timm_sage: SAGE saliency-guided mixup for timm, torchvision and albumentations.

``import timm_sage`` is light (no torch, no timm), so that ``timm-sage --help`` answers at once: the
public names below are imported on first use (PEP 562), and that first use also registers the CIFAR
networks in timm's model registry, as ``import timm_sage.models`` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "SageConfig": "timm_sage.config",
    "CleanGradientLostWarning": "timm_sage.core.clean",
    "LossWeight": "timm_sage.core.clean",
    "SageMixOutput": "timm_sage.functional",
    "sage_mix": "timm_sage.functional",
    "sage_target": "timm_sage.functional",
    "saliency_map": "timm_sage.functional",
    "sample_translations": "timm_sage.functional",
    "SageMixup": "timm_sage.mixup",
    "unwrap_model": "timm_sage.mixup",
}

__all__ = [
    "CleanGradientLostWarning",
    "LossWeight",
    "SageConfig",
    "SageMixOutput",
    "SageMixup",
    "__version__",
    "sage_mix",
    "sage_target",
    "saliency_map",
    "sample_translations",
    "unwrap_model",
]

if TYPE_CHECKING:
    from timm_sage.config import SageConfig
    from timm_sage.core.clean import CleanGradientLostWarning, LossWeight
    from timm_sage.functional import SageMixOutput, sage_mix, sage_target, saliency_map, sample_translations
    from timm_sage.mixup import SageMixup, unwrap_model


# subpackages and modules reachable as attributes (timm_sage.models ...), as after an eager import
_SUBMODULES = ("config", "core", "functional", "mixup", "models", "transforms")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"timm_sage.{name}")
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'timm_sage' has no attribute {name!r}")
    # Before anything imports from timm: one clear ImportError for a timm below the floor (the version
    # and path of the timm found, and what it lacks), not a missing name deep in timm_sage.
    importlib.import_module("timm_sage._timm_compat").check_timm()
    importlib.import_module("timm_sage.models")  # registers the CIFAR networks in timm
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
