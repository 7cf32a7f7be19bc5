"""CIFAR-style networks of the SAGE paper, registered in timm's model registry on import.

After ``import timm_sage.models`` (the first use of ``timm_sage.SageMixup`` or any public name does it; a
bare ``import timm_sage`` stays light), ``timm.create_model(name, ...)`` builds:

============================  ==========================================================  ============
name                          network                                                     params (10 cl.)
============================  ==========================================================  ============
``preactresnet18``            PreActResNet18, widths 64-128-256-512                       11.17 M
``wrn16_8``                   Wide ResNet 16-8, widths 128-256-512                        10.96 M
``resnext29_4_24``            ResNeXt29, cardinality 4, group width 24                    4.85 M
``preactresnet18_tiny``       PreActResNet18 at width 1/8 (8-16-32-64), for CPU runs      0.18 M
============================  ==========================================================  ============

Each also exists with a ``cifar_`` prefix (``cifar_preactresnet18`` ...), the name to use if another plugin
registers the plain one. None of the plain names exists in timm itself (checked against timm 1.0.31). All take
``num_classes``, ``in_chans`` (1 for Fashion-MNIST), ``width`` (multiplier of every channel count) and
``drop_rate``; all have a 3x3 stride-1 stem and no max-pool, for 32x32 (or 28x28) images.
"""

from __future__ import annotations

from typing import Any

from timm_sage._timm_compat import check_timm

# Every way in (the plugin, the CLI, a public name) imports this module before it uses timm: a timm below
# the floor gets its one message here, not a missing name from timm.models below.
check_timm()

from timm.models import build_model_with_cfg, register_model  # noqa: E402

from timm_sage.models._common import CIFAR_MEAN, CIFAR_STD, cifar_cfg  # noqa: E402
from timm_sage.models.preact_resnet import PreActResNet  # noqa: E402
from timm_sage.models.resnext import CifarResNeXt  # noqa: E402
from timm_sage.models.wide_resnet import WideResNet  # noqa: E402

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CifarResNeXt", "MODEL_NAMES", "PreActResNet", "WideResNet"]

MODEL_NAMES = ("preactresnet18", "wrn16_8", "resnext29_4_24", "preactresnet18_tiny")

# Read by timm's register_model: one pretrained_cfg (no weights) per registered name.
default_cfgs: dict[str, dict[str, Any]] = {}
for _name in MODEL_NAMES:
    default_cfgs[_name] = cifar_cfg()
    default_cfgs["cifar_" + _name] = cifar_cfg()


def _build(cls: type, variant: str, pretrained: bool, **kwargs: Any):
    if pretrained:
        raise ValueError(f"pretrained: no pretrained weights exist for {variant}; pass pretrained=False")
    kwargs.pop("pretrained_cfg_overlay", None)
    return build_model_with_cfg(cls, variant, pretrained=False, **kwargs)


def _preactresnet18(variant: str, pretrained: bool, **kwargs: Any):
    return _build(PreActResNet, variant, pretrained, layers=(2, 2, 2, 2), **kwargs)


def _preactresnet18_tiny(variant: str, pretrained: bool, **kwargs: Any):
    kwargs.setdefault("width", 0.125)
    return _build(PreActResNet, variant, pretrained, layers=(2, 2, 2, 2), **kwargs)


def _wrn16_8(variant: str, pretrained: bool, **kwargs: Any):
    return _build(WideResNet, variant, pretrained, depth=16, widen_factor=8, **kwargs)


def _resnext29_4_24(variant: str, pretrained: bool, **kwargs: Any):
    return _build(CifarResNeXt, variant, pretrained, depth=29, cardinality=4, base_width=24, **kwargs)


@register_model
def preactresnet18(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """PreActResNet18 for 32x32 images (the paper's CIFAR networks)."""
    return _preactresnet18("preactresnet18", pretrained, **kwargs)


@register_model
def cifar_preactresnet18(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """Alias of ``preactresnet18``."""
    return _preactresnet18("cifar_preactresnet18", pretrained, **kwargs)


@register_model
def preactresnet18_tiny(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """PreActResNet18 at 1/8 of the width (0.18 M parameters): the CPU / Fashion-MNIST model."""
    return _preactresnet18_tiny("preactresnet18_tiny", pretrained, **kwargs)


@register_model
def cifar_preactresnet18_tiny(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """Alias of ``preactresnet18_tiny``."""
    return _preactresnet18_tiny("cifar_preactresnet18_tiny", pretrained, **kwargs)


@register_model
def wrn16_8(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """Wide ResNet 16-8 for 32x32 images (the paper's CIFAR networks)."""
    return _wrn16_8("wrn16_8", pretrained, **kwargs)


@register_model
def cifar_wrn16_8(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """Alias of ``wrn16_8``."""
    return _wrn16_8("cifar_wrn16_8", pretrained, **kwargs)


@register_model
def resnext29_4_24(pretrained: bool = False, **kwargs: Any) -> CifarResNeXt:
    """ResNeXt29 (cardinality 4, group width 24) for 32x32 images (the paper's CIFAR networks)."""
    return _resnext29_4_24("resnext29_4_24", pretrained, **kwargs)


@register_model
def cifar_resnext29_4_24(pretrained: bool = False, **kwargs: Any) -> CifarResNeXt:
    """Alias of ``resnext29_4_24``."""
    return _resnext29_4_24("cifar_resnext29_4_24", pretrained, **kwargs)
