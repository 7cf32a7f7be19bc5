"""The saliency pass of every source (docs/algorithm.md): the paper's gradient, or a forward-only map.

``saliency_source="gradient"`` is :func:`timm_sage.core.saliency.compute_saliency`, unchanged. The
forward-only sources ("cam", "features") read the model the way timm models expose themselves:
``forward_features(x)`` gives the last feature map (CNNs (B, C, h, w), Swin-like ``output_fmt="NHWC"``
models (B, h, w, C), ViTs (B, N, C) tokens with ``num_prefix_tokens`` class/register tokens first) and
``get_classifier()`` the linear layer after the global pool. :func:`read_head` checks this once, when the
model is bound (a ValueError naming what is missing); :func:`feature_saliency` runs one no-grad forward
and turns its feature map into maps with :mod:`timm_sage.core.cam`. No host read in either pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage.config import SageConfig
from timm_sage.core import cam
from timm_sage.core.clean import CleanGradients
from timm_sage.core.saliency import (
    SaliencyPass,
    _clean_loss,
    compute_saliency,
    kept_running_statistics,
    pass_size,
)


class FeatureForward(nn.Module):
    """``model.forward_features`` as a module's ``forward``, so that it can be compiled like the model
    (``torch.compile`` of this module shares the model's parameters and buffers)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@dataclass(frozen=True)
class FeatureHead:
    """How to read one model's last feature map and classifier (made by :func:`read_head`).

    ``module``: the plain model (its mode, its BatchNorm statistics). ``features``: callable (B, C_in, H,
    W) -> the feature map (``module.forward_features``, possibly compiled). ``classifier``: the linear
    layer after the pool (None for "features"). ``layout``: "NCHW" or "NHWC" for 4-D feature maps (3-D
    ones are tokens). ``num_prefix_tokens``: class and register tokens before the patch tokens.
    """

    module: nn.Module
    features: Callable[[torch.Tensor], torch.Tensor]
    classifier: nn.Module | None
    layout: str = "NCHW"
    num_prefix_tokens: int = 0

    def weight(self) -> torch.Tensor:
        """The classifier's weight as (K, C), read at every call (the live model's changes)."""
        if self.classifier is None:
            raise ValueError("this head was read for saliency_source='features': it has no classifier")
        weight = self.classifier.weight
        return weight.reshape(weight.shape[0], -1)

    def token_grid(self, input_size: tuple[int, int], tokens: int) -> tuple[int, int]:
        """(h, w) of the patch grid for an input of ``input_size`` (metadata only): the patch
        embedding's own rule (timm's ``patch_embed.dynamic_feat_size``) where the model has one, else the
        grid of the input's aspect ratio that the patch tokens fill."""
        patch_embed = getattr(self.module, "patch_embed", None)
        dynamic = getattr(patch_embed, "dynamic_feat_size", None)
        if callable(dynamic):
            height, width = dynamic(tuple(input_size))
            return int(height), int(width)
        patches = tokens - self.num_prefix_tokens
        height = max(1, round(math.sqrt(patches * input_size[0] / input_size[1])))
        return height, max(1, patches // height)

    def grid_features(self, features: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """The feature map as (B, C, h, w): tokens laid out on the patch grid (prefix tokens dropped),
        channels-last maps permuted."""
        if features.ndim == 3:
            grid = self.token_grid(input_size, features.shape[1])
            return cam.tokens_to_grid(features, self.num_prefix_tokens, grid)
        return cam.to_channels_first(features, self.layout)


def _describe(model: nn.Module) -> str:
    return type(model).__name__


def read_head(model: nn.Module, source: str, features: Callable | None = None) -> FeatureHead:
    """The :class:`FeatureHead` of a plain (unwrapped) model for ``source`` "cam" or "features".

    ``features``: the callable that runs ``model.forward_features`` (a compiled :class:`FeatureForward`);
    default: the plain method.

    Raises:
        ValueError: the model has no ``forward_features``; for "cam", no ``get_classifier``, a classifier
            without a linear weight (``num_classes=0`` gives ``nn.Identity``), or one whose input size is
            not the feature map's channel count ``num_features`` (layers between the pool and the
            classifier, as in MobileNetV3's ``conv_head``, which a CAM cannot see through). Each message
            names ``saliency_source`` and what is missing.
    """
    if source not in ("cam", "features"):
        raise ValueError(f"saliency_source must be 'cam' or 'features' to read a head, got {source!r}")
    name = _describe(model)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"saliency_source={source!r} reads the last feature map through model.forward_features(x), "
            f"which {name} does not have; give the model a forward_features returning the map before "
            "global pooling (as timm models do), or use saliency_source='gradient'"
        )
    layout = getattr(model, "output_fmt", "NCHW")
    layout = layout if layout in ("NCHW", "NHWC") else "NCHW"
    prefix = getattr(model, "num_prefix_tokens", 0)
    prefix = prefix if isinstance(prefix, int) and not isinstance(prefix, bool) and prefix >= 0 else 0
    classifier = None
    if source == "cam":
        if not callable(getattr(model, "get_classifier", None)):
            raise ValueError(
                f"saliency_source='cam' weights the feature map by the classifier read through "
                f"model.get_classifier(), which {name} does not have; add one returning the linear layer "
                "after the global pool (as timm models do), or use saliency_source='features' or 'gradient'"
            )
        classifier = model.get_classifier()
        weight = getattr(classifier, "weight", None)
        linear = isinstance(weight, torch.Tensor) and (
            weight.ndim == 2 or (weight.ndim == 4 and tuple(weight.shape[2:]) == (1, 1))
        )
        if not linear:
            what = type(classifier).__name__
            hint = (
                " (a model built with num_classes=0 has none)" if isinstance(classifier, nn.Identity) else ""
            )
            raise ValueError(
                f"saliency_source='cam' needs a linear classifier weight (K, C) from "
                f"{name}.get_classifier(), got {what}{hint}; use saliency_source='features' or 'gradient'"
            )
        num_features = getattr(model, "num_features", None)
        in_features = weight.reshape(weight.shape[0], -1).shape[1]
        if isinstance(num_features, int) and num_features != in_features:
            raise ValueError(
                f"saliency_source='cam': {name}'s classifier takes {in_features} features but its feature "
                f"map has num_features={num_features} channels: layers between the pooled features and the "
                "classifier (a pre-logits or conv head) cannot be read as a class activation map; use "
                "saliency_source='features' or 'gradient'"
            )
    return FeatureHead(
        model, features if features is not None else model.forward_features, classifier, layout, prefix
    )


def _logits(head: FeatureHead, features: torch.Tensor) -> torch.Tensor | None:
    forward_head = getattr(head.module, "forward_head", None)
    if not callable(forward_head):
        return None
    logits = forward_head(features)
    return logits if isinstance(logits, torch.Tensor) and logits.ndim == 2 else None


def feature_saliency(
    head: FeatureHead,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    source: str,
    loss: str,
    blur_kernel: int,
    blur_sigma: float,
    scale: float = 1.0,
    size: int | None = None,
    num_classes: int | None = None,
) -> SaliencyPass:
    """Forward-only saliency of ``source`` ("cam" or "features"): one no-grad forward of ``head``'s model.

    The forward runs in the model's current mode and under the caller's autocast (a training-mode forward
    updates BatchNorm's running statistics, as the gradient pass at full resolution does); the maps are
    computed in float32 with autocast off. ``scale`` / ``size``: the pass runs on the batch resized to
    :func:`~timm_sage.core.saliency.pass_size` (running statistics kept), the maps are upsampled from its
    feature map to the image's H x W all the same. ``num_classes``: the targets' width, checked against
    the classifier's and the head's outputs (shapes: no read).

    Returns:
        :class:`~timm_sage.core.saliency.SaliencyPass`: ``saliency`` (B, H, W) float32, ``loss`` the clean
        loss of the model's own head (``forward_head``) on these features (0-dim float32, NaN when the
        model has none), ``finite`` (0-dim bool, on the device): the maps (and the loss, when there is
        one) were finite. Not finite: the maps are all NaN (the SAGE step then leaves the batch unmixed).
    """
    height, width = x.shape[-2:]
    small = pass_size(height, width, scale=scale, size=size)
    resized = small != (height, width)
    with torch.no_grad():
        inputs = x.detach()
        if resized:
            inputs = F.interpolate(inputs, size=small, mode="bilinear", antialias=True, align_corners=False)
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                inputs = inputs.contiguous(memory_format=torch.channels_last)
        keep = kept_running_statistics(head.module) if resized else contextlib.nullcontext()
        with keep:
            features = head.features(inputs)  # under the caller's autocast, if any
            logits = _logits(head, features)
        outputs = [] if logits is None else [logits.shape[-1]]
        outputs += [head.weight().shape[0]] if source == "cam" else []
        if num_classes is not None and any(width != num_classes for width in outputs):
            raise ValueError(
                f"num_classes={num_classes}, but the model outputs {outputs[0]} logits per image: build the "
                "mixer with the model's num_classes, or bind the model it was built for"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            grid = head.grid_features(features, (inputs.shape[-2], inputs.shape[-1]))
            if grid.shape[-2] * grid.shape[-1] == 1:
                # A 1x1 map has no spatial extent: the CAM would be all zeros (a uniform map), the norm
                # constant, and SAGE would mix blind. Refused rather than silently degraded (shapes only).
                raise ValueError(
                    f"saliency_source={source!r}: the last feature map of {type(head.module).__name__} is "
                    f"1x1 for {inputs.shape[-2]}x{inputs.shape[-1]} inputs: no spatial map to give; "
                    "use saliency_source='gradient', larger images (or no saliency_scale / saliency_size), "
                    "or a network with a smaller output stride"
                )
            weight = head.weight() if source == "cam" else None
            maps = cam.forward_only_maps(
                grid, source, (height, width), weight=weight, target=target, blur_kernel=blur_kernel,
                blur_sigma=blur_sigma,
            )  # fmt: skip
            total = maps.sum()
            if logits is not None:
                clean_loss = _clean_loss(logits.float(), target, loss)
                total = total + clean_loss
            else:
                clean_loss = torch.full((), math.nan, device=x.device)
            finite = torch.isfinite(total)
            saliency = torch.where(finite, maps, math.nan)
    return SaliencyPass(saliency, clean_loss, finite)


def source_saliency(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    head: FeatureHead | None,
    x: torch.Tensor,
    target: torch.Tensor,
    config: SageConfig,
    *,
    param_grad_weight: float = 0.0,
    clean_buffer: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> tuple[SaliencyPass, CleanGradients | None]:
    """The saliency pass of ``config.saliency_source``, on trusted arguments, with no host read.

    "gradient": :func:`~timm_sage.core.saliency.compute_saliency` of ``model`` (with the clean
    gradient of ``param_grad_weight``, as before). "cam" / "features": :func:`feature_saliency` of
    ``head``; there is no backward, so no clean gradient (None): SageConfig refuses a separate-pass
    clean term with these sources, and ``param_grad_weight`` must be 0.
    """
    if config.saliency_source == "gradient":
        return compute_saliency(
            model, x, target, loss=config.saliency_loss, reduce=config.saliency_reduce,
            blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma, param_grad_weight=param_grad_weight,
            scale=config.saliency_scale, size=config.saliency_size, clean_buffer=clean_buffer,
            num_classes=num_classes,
        )  # fmt: skip
    if head is None:
        raise ValueError(
            f"saliency_source={config.saliency_source!r} needs the model's feature head (read_head(model))"
        )
    if param_grad_weight > 0:
        raise ValueError(
            f"saliency_source={config.saliency_source!r} runs no backward: it has no clean gradient to give "
            "(use clean_term='in_batch' or update_ratio 1)"
        )
    result = feature_saliency(
        head, x, target, source=config.saliency_source, loss=config.saliency_loss,
        blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma, scale=config.saliency_scale,
        size=config.saliency_size, num_classes=num_classes,
    )  # fmt: skip
    return result, None
