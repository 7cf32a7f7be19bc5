"""Saliency of the live model (SAGE.md section 1): one forward/backward on the clean batch, the input
gradient reduced over channels and smoothed. Public through :mod:`timm_sage.functional`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage import _checks

SALIENCY_LOSSES = ("bce_softmax", "cross_entropy")
SALIENCY_REDUCTIONS = ("mean_abs", "l2")


class SaliencyPass(NamedTuple):
    """Result of :func:`saliency_pass`: ``saliency`` (B, H, W) float32 and the clean ``loss`` (0-dim)."""

    saliency: torch.Tensor
    loss: torch.Tensor


def _gaussian_taps(kernel_size: int, sigma: float, device: torch.device) -> torch.Tensor:
    # Same taps as torchvision's GaussianBlur: exp(-x^2 / 2 sigma^2) on a centred integer grid.
    half = (kernel_size - 1) * 0.5
    grid = torch.linspace(-half, half, kernel_size, device=device, dtype=torch.float32)
    taps = torch.exp(-0.5 * (grid / sigma) ** 2)
    return taps / taps.sum()


def blur_maps(maps: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, as torchvision's ``GaussianBlur``.

    Args:
        maps: (B, H, W) floating tensor.
        kernel_size: odd positive int; 1 leaves the maps unchanged.
        sigma: positive standard deviation in pixels.

    Returns:
        (B, H, W) float32.
    """
    _checks.check_positive_int("blur_kernel", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel must be odd, got {kernel_size}")
    _checks.check_fraction("blur_sigma", sigma, low=0.0, high=math.inf, open_low=True)
    maps = maps.float()
    if kernel_size == 1:
        return maps
    pad = kernel_size // 2
    if min(maps.shape[-2:]) <= pad:
        raise ValueError(
            f"blur_kernel={kernel_size} needs images larger than {pad} pixels per side for reflect "
            f"padding, got {tuple(maps.shape[-2:])}; use a smaller blur_kernel"
        )
    taps = _gaussian_taps(kernel_size, sigma, maps.device)
    out = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, taps.view(1, 1, 1, -1))
    out = F.conv2d(out, taps.view(1, 1, -1, 1))
    return out[:, 0]


def _clean_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    logits = logits.float()
    num_classes = logits.shape[-1]
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"soft target must have shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        probabilities = target.float()
        _checks.check_finite_nonnegative("target", probabilities)
        if loss == "bce_softmax" and bool((probabilities > 1).any()):
            raise ValueError("soft target values must lie in [0, 1] for saliency_loss='bce_softmax'")
    else:
        if target.ndim != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
        if bool((target < 0).any()) or bool((target >= num_classes).any()):
            raise ValueError(f"target labels must lie in [0, {num_classes - 1}] (the model's outputs)")
        probabilities = F.one_hot(target.long(), num_classes).float()
    if loss == "cross_entropy":
        return F.cross_entropy(logits, probabilities)
    predicted = torch.softmax(logits, dim=-1)
    # F.binary_cross_entropy raises (CPU) or device-asserts (CUDA) on NaN inputs. Feed it a placeholder
    # and hand back a NaN loss instead, which saliency_pass reports; no host sync here.
    broken = ~torch.isfinite(predicted).all()
    value = F.binary_cross_entropy(torch.where(broken, 0.5, predicted), probabilities)
    return torch.where(broken, math.nan, value)


def saliency_pass(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str = "bce_softmax",
    reduce: str = "mean_abs",
    blur_kernel: int = 5,
    blur_sigma: float = 1.0,
    param_grad_weight: float = 0.0,
    backward_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scale: float = 1.0,
) -> SaliencyPass:
    """One forward and backward of ``model`` on the clean batch; smoothed input-gradient saliency.

    The model runs in whatever mode it is in (SAGE uses train mode) and under whatever autocast the
    caller is in. With ``param_grad_weight == 0`` only the input gradient is computed, so no
    parameter's ``.grad`` is touched and no weight gradient is paid for. With ``param_grad_weight = w > 0``
    the same backward also accumulates ``w * d(loss)/d(param)`` into ``.grad`` (SAGE.md section 5).

    Args:
        model: callable mapping (B, C, H, W) to logits (B, num_classes).
        x: (B, C, H, W) floating images, normalised as the model expects.
        target: (B,) integer labels or (B, num_classes) soft targets.
        loss: ``"bce_softmax"`` (reference: BCE of softmax against one-hot) or ``"cross_entropy"``.
        reduce: ``"mean_abs"`` (reference: mean of |grad| over channels) or ``"l2"`` (paper).
        blur_kernel, blur_sigma: Gaussian smoothing, see :func:`blur_maps`.
        param_grad_weight: weight of the clean loss in the parameters' ``.grad``.
        backward_scale: applied to the weighted loss before ``backward`` (e.g. ``GradScaler.scale``).
        scale: cheap saliency (``saliency_scale``), a float in (0, 1]. Below 1 the pass runs on the batch
            resized to ``round(H * scale) x round(W * scale)`` (bilinear, antialiased) and the channel-
            reduced gradient map is resized back to H x W (bilinear) before smoothing: about
            ``scale ** 2`` of the work for a convolutional network. The clean loss, and with
            ``param_grad_weight > 0`` its parameter gradient, are then those of the resized batch.
            Needs a model that accepts the smaller input (CNNs with global pooling do).

    Returns:
        :class:`SaliencyPass` with ``saliency`` (B, H, W) float32, non-negative, detached, and the
        clean ``loss`` (0-dim float32, detached). The maps' overall scale carries ``param_grad_weight``
        and ``backward_scale`` (it is the gradient of the weighted loss); SAGE normalises each map, so
        only their shape matters. When the loss is NaN or Inf no backward runs and
        the saliency is all NaN, so a caller can skip the batch (SageMixup does, with a warning).
    """
    _checks.check_tensor("x", x)
    _checks.check_floating("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    _checks.check_tensor("target", target)
    _checks.check_choice("loss", loss, SALIENCY_LOSSES)
    _checks.check_choice("reduce", reduce, SALIENCY_REDUCTIONS)
    _checks.check_fraction("param_grad_weight", param_grad_weight, high=math.inf)
    _checks.check_fraction("scale", scale, open_low=True)
    height, width = x.shape[-2:]
    small = (max(1, round(height * scale)), max(1, round(width * scale)))
    if small != (height, width):
        with torch.no_grad():
            inputs = F.interpolate(
                x.detach(), size=small, mode="bilinear", antialias=True, align_corners=False
            )
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        inputs.requires_grad_(True)
    else:
        inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        clean_loss = _clean_loss(model(inputs), target, loss)
        if not bool(torch.isfinite(clean_loss)):
            # A NaN/Inf loss must not reach any .grad: report it as a NaN map and let the caller decide.
            nan_map = torch.full((x.shape[0], *x.shape[-2:]), math.nan, device=x.device)
            return SaliencyPass(nan_map, clean_loss.detach())
        if param_grad_weight > 0:
            scaled = clean_loss * param_grad_weight
            if backward_scale is not None:
                scaled = backward_scale(scaled)
            module = model if isinstance(model, nn.Module) else None
            params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
            if not params:
                scaled.backward()
                grad = inputs.grad
            else:
                grad, *param_grads = torch.autograd.grad(scaled, [inputs, *params], allow_unused=True)
                present = [(p, g) for p, g in zip(params, param_grads, strict=True) if g is not None]
                # NaN and Inf survive a sum, so one total checks every gradient with one sync, far
                # cheaper than an isfinite mask per tensor (a finite total that overflows counts too).
                total = torch.stack([g.sum(dtype=torch.float32) for g in [grad] + [g for _, g in present]])
                if not bool(torch.isfinite(total.sum())):
                    # A NaN/Inf gradient must not reach any .grad either: same report as a NaN loss.
                    nan_map = torch.full((x.shape[0], *x.shape[-2:]), math.nan, device=x.device)
                    return SaliencyPass(nan_map, clean_loss.detach())
                for param, param_grad in present:
                    if param.grad is None:
                        param.grad = param_grad
                    else:
                        param.grad.add_(param_grad)
        else:
            (grad,) = torch.autograd.grad(clean_loss, inputs)
    # The caller's autocast must not push the reduction and the blur back into half precision.
    with torch.autocast(device_type=grad.device.type, enabled=False):
        grad = grad.float()
        channel_map = grad.abs().mean(1) if reduce == "mean_abs" else torch.linalg.vector_norm(grad, dim=1)
        if channel_map.shape[-2:] != (height, width):
            # Bilinear interpolation of non-negative values stays non-negative.
            channel_map = F.interpolate(
                channel_map[:, None], size=(height, width), mode="bilinear", align_corners=False
            )[:, 0]
        saliency = blur_maps(channel_map, blur_kernel, blur_sigma)
    return SaliencyPass(saliency, clean_loss.detach())


def saliency_map(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str = "bce_softmax",
    reduce: str = "mean_abs",
    blur_kernel: int = 5,
    blur_sigma: float = 1.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Smoothed saliency (B, H, W) float32 of the live ``model`` on the clean batch ``x``.

    Input gradients only: no parameter ``.grad`` is written. See :func:`saliency_pass` for arguments.
    """
    return saliency_pass(
        model,
        x,
        target,
        loss=loss,
        reduce=reduce,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        scale=scale,
    ).saliency
