"""timm_sage: SAGE saliency-guided mixup for timm, torchvision and albumentations."""

from timm_sage import models  # noqa: F401  (registers the CIFAR networks in timm)
from timm_sage.config import SageConfig
from timm_sage.core.clean import CleanGradientLostWarning, LossWeight
from timm_sage.functional import (
    SageMixOutput,
    sage_mix,
    sage_target,
    saliency_map,
    sample_translations,
)
from timm_sage.mixup import SageMixup, unwrap_model

__version__ = "0.2.0"

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
