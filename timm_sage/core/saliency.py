"""Saliency of the live model (docs/algorithm.md section 1): one forward/backward on the clean batch,
the input gradient reduced over channels and smoothed. Public through :mod:`timm_sage.functional`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage.config import SAGE_DEFAULTS as _D
from timm_sage.config import SALIENCY_LOSSES, SALIENCY_REDUCTIONS
from timm_sage.core import checks as _checks
from timm_sage.core.clean import CleanGradients
from timm_sage.core.mixing import one_hot_targets


class SaliencyPass(NamedTuple):
    """Result of :func:`saliency_pass`: ``saliency`` (B, H, W) float32, the clean ``loss`` (0-dim
    float32) and ``finite`` (0-dim bool, on the device): the loss and every gradient were finite."""

    saliency: torch.Tensor
    loss: torch.Tensor
    finite: torch.Tensor


def _gaussian_taps(kernel_size: int, sigma: float, device: torch.device) -> torch.Tensor:
    # Same taps as torchvision's GaussianBlur: exp(-x^2 / 2 sigma^2) on a centred integer grid.
    half = (kernel_size - 1) * 0.5
    grid = torch.linspace(-half, half, kernel_size, device=device, dtype=torch.float32)
    taps = torch.exp(-0.5 * (grid / sigma) ** 2)
    return taps / taps.sum()


def check_blur(kernel_size: int, sigma: float, size: tuple[int, int] | torch.Size) -> None:
    """The blur's rules (metadata only): odd positive kernel, positive sigma, and reflect padding
    needs images larger than ``kernel_size // 2`` per side. Errors name ``blur_kernel`` / ``blur_sigma``."""
    _checks.check_positive_int("blur_kernel", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel must be odd, got {kernel_size}")
    _checks.check_fraction("blur_sigma", sigma, low=0.0, high=math.inf, open_low=True)
    pad = kernel_size // 2
    if kernel_size > 1 and min(size) <= pad:
        raise ValueError(
            f"blur_kernel={kernel_size} needs images larger than {pad} pixels per side for reflect "
            f"padding, got {tuple(size)}; use a smaller blur_kernel"
        )


def blur_maps(maps: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, as torchvision's ``GaussianBlur``.

    Args:
        maps: (B, H, W) floating tensor.
        kernel_size: odd positive int; 1 leaves the maps unchanged.
        sigma: positive standard deviation in pixels.

    Returns:
        (B, H, W) float32.
    """
    check_blur(kernel_size, sigma, maps.shape[-2:])
    maps = maps.float()
    if kernel_size == 1:
        return maps
    pad = kernel_size // 2
    taps = _gaussian_taps(kernel_size, sigma, maps.device)
    out = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, taps.view(1, 1, 1, -1))
    out = F.conv2d(out, taps.view(1, 1, -1, 1))
    return out[:, 0]


def _check_target(target: torch.Tensor, batch: int, loss: str) -> None:
    """Labels and soft targets at the public boundary (reads values: not for the library's hot path)."""
    if target.is_floating_point():
        _checks.check_finite_nonnegative("target", target)
        if loss == "bce_softmax" and bool((target > 1).any()):
            raise ValueError("soft target values must lie in [0, 1] for saliency_loss='bce_softmax'")
    elif target.ndim != 1 or target.shape[0] != batch:
        raise ValueError(
            f"target must have shape ({batch},) labels or (B, num_classes), got {tuple(target.shape)}"
        )


# Buffers a normalisation layer updates in a training-mode forward: BatchNorm's running_mean / running_var /
# num_batches_tracked, and the running_* buffers of other layers (timm's EvoNorm, ...).
def _running_statistics(model: nn.Module | Callable) -> list[torch.Tensor]:
    if not isinstance(model, nn.Module) or not model.training:
        return []
    return [
        buffer
        for module in model.modules()
        for name, buffer in module.named_buffers(recurse=False)
        if buffer is not None and (name.startswith("running_") or name == "num_batches_tracked")
    ]


@contextlib.contextmanager
def kept_running_statistics(model: nn.Module | Callable) -> Iterator[None]:
    """Leave the running statistics of ``model``'s normalisation layers as they were before the block.

    Used by the resized (cheap) saliency pass: a training-mode forward on the batch at another
    resolution would pull BatchNorm's running mean and variance towards the statistics of small images,
    which the model never sees at test time (measured: -2.5 points of test accuracy on the data-scarce
    Fashion-MNIST study, all of it recovered by recalibrating BatchNorm). The forward still normalises
    with the batch's own statistics, as in training. Copies on the device: no host read.
    """
    buffers = _running_statistics(model)
    # One fused clone and one fused copy back, not two small ops per buffer (a ResNet-50 has 159).
    saved = torch._foreach_clone(buffers) if buffers else []
    try:
        yield
    finally:
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved)


def _logits_of(model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"model must return a logits tensor (B, num_classes), got {type(logits).__name__}; wrap a model "
            "that returns a tuple or dict so that it returns the classification logits"
        )
    if logits.ndim != 2 or logits.shape[0] != inputs.shape[0]:
        raise ValueError(f"model must return logits of shape (B, num_classes), got {tuple(logits.shape)}")
    return logits


def _clean_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """The clean loss (0-dim float32) of ``logits`` (B, num_classes), computed in float32. The caller runs
    it with autocast off: CUDA autocast refuses ``binary_cross_entropy`` outright, and a loss averaged over
    ``B * num_classes`` values is no place for half precision."""
    logits = logits.float()
    num_classes = logits.shape[-1]
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"soft target must have shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        probabilities = target.float()
    else:
        # A scatter, not F.one_hot, which reads the labels' min and max back to the host. Labels outside
        # [0, num_classes) fail inside the kernel; the public saliency_pass checks them first, clearly.
        probabilities = one_hot_targets(target, num_classes, 0.0)
    if loss == "cross_entropy":
        return F.cross_entropy(logits, probabilities)
    predicted = torch.softmax(logits, dim=-1)
    # F.binary_cross_entropy raises (CPU) or device-asserts (CUDA) on NaN inputs. Feed it a placeholder
    # and hand back a NaN loss instead, which the pass reports as not finite; no host sync here.
    broken = ~torch.isfinite(predicted).all()
    value = F.binary_cross_entropy(torch.where(broken, 0.5, predicted), probabilities)
    return torch.where(broken, math.nan, value)


def pass_size(height: int, width: int, *, scale: float = 1.0, size: int | None = None) -> tuple[int, int]:
    """The (height, width) the saliency pass runs at, for cheap saliency (metadata only).

    ``scale`` (``saliency_scale``) in (0, 1]: ``(round(H * scale), round(W * scale))``, at least 1.
    ``size`` (``saliency_size``) an int >= 1: the shorter side becomes ``size`` and the longer one keeps
    the aspect ratio (``round(long * size / short)``), as ``torchvision``'s ``Resize(size)``; images whose
    shorter side is at most ``size`` keep their size (``size`` is a cap, as ``search_size`` is). The
    result equal to ``(H, W)`` means no resize. ValueError naming ``saliency_size`` / ``saliency_scale``
    when both resize.
    """
    if size is None:
        return (max(1, round(height * scale)), max(1, round(width * scale)))
    _checks.check_positive_int("saliency_size", size)
    if scale < 1:
        raise ValueError(
            f"saliency_size={size} and saliency_scale={scale} both resize the saliency pass; set one of them"
        )
    short = min(height, width)
    if short <= size:
        return (height, width)
    return (max(1, round(height * size / short)), max(1, round(width * size / short)))


def saliency_loss_scale(batch: int, num_classes: int, loss: str) -> float:
    """The power of two the clean loss is multiplied by before its backward (shapes only, no host read).

    The clean loss is a mean: over ``B * num_classes`` values for ``"bce_softmax"``, over ``B`` images
    for ``"cross_entropy"``, so each logit's gradient is about ``1 / (B * num_classes)`` (``1 / B``) of
    a per-image one. Under float16 autocast the backward through the model then flushes the input
    gradient to zero (every map of a B=32, 1000-class batch, measured). Scaled by the smallest power of
    two at least that count, the backward sees per-image gradients (a logit's is at most about 1),
    far from float16's smallest normal (6e-5) and its largest value (65504). A power of two, so that
    undoing it in float32 is exact.
    """
    count = batch * num_classes if loss == "bce_softmax" else batch
    return float(2 ** max(0, (count - 1).bit_length()))


def saliency_pass(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str = _D.saliency_loss,
    reduce: str = _D.saliency_reduce,
    blur_kernel: int = _D.blur_kernel,
    blur_sigma: float = _D.blur_sigma,
    param_grad_weight: float = 0.0,
    backward_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scale: float = _D.saliency_scale,
    size: int | None = _D.saliency_size,
) -> SaliencyPass:
    """One forward and backward of ``model`` on the clean batch; smoothed input-gradient saliency.

    The model's forward runs in whatever mode it is in (SAGE uses train mode) and under whatever autocast
    the caller is in; the loss, its backward and the maps run in float32 with autocast off, and the
    loss is scaled by :func:`saliency_loss_scale` before its backward (undone in float32 afterwards) so
    that float16 gradients neither underflow nor overflow. With ``param_grad_weight == 0`` only the
    input gradient is computed, so no parameter's ``.grad`` is touched and no weight gradient is paid
    for. With ``param_grad_weight = w > 0`` the same backward also accumulates ``w * d(loss)/d(param)``
    into ``.grad`` (docs/algorithm.md section 5).

    Args:
        model: callable mapping (B, C, H, W) to logits (B, num_classes).
        x: (B, C, H, W) floating images, normalised as the model expects.
        target: (B,) integer labels or (B, num_classes) soft targets.
        loss: ``"bce_softmax"`` (reference: BCE of softmax against one-hot) or ``"cross_entropy"``.
        reduce: ``"mean_abs"`` (reference: mean of |grad| over channels) or ``"l2"`` (paper).
        blur_kernel, blur_sigma: Gaussian smoothing, see :func:`blur_maps`.
        param_grad_weight: weight of the clean loss in the parameters' ``.grad``.
        backward_scale: the loss scaler's ``scale`` (``GradScaler.scale``): the clean parameter gradient
            enters ``.grad`` multiplied by it, as a backward of ``backward_scale(w * loss)`` leaves it.
        scale: cheap saliency (``saliency_scale``), a float in (0, 1]. Below 1 the pass runs on the batch
            resized to ``round(H * scale) x round(W * scale)`` (bilinear, antialiased) and the channel-
            reduced gradient map is resized back to H x W (bilinear) before smoothing: about
            ``scale ** 2`` of the work for a convolutional network. The clean loss, and with
            ``param_grad_weight > 0`` its parameter gradient, are then those of the resized batch. The
            resized forward leaves the running statistics of normalisation layers (BatchNorm's running
            mean and variance) as they were (:func:`kept_running_statistics`); at ``scale == 1`` they
            update as in the reference. Needs a model that accepts the smaller input (CNNs with global
            pooling do).
        size: cheap saliency at a fixed size (``saliency_size``), None or an int >= 1: the pass runs on
            the batch resized to :func:`pass_size` (shorter side ``size``, aspect kept), with everything
            else as for ``scale < 1``. Not together with ``scale < 1``.

    Returns:
        :class:`SaliencyPass` with ``saliency`` (B, H, W) float32, non-negative, detached, the clean
        ``loss`` (0-dim float32, detached) and ``finite`` (0-dim bool). The maps come from the input
        gradient of the clean loss itself, whatever ``param_grad_weight`` and ``backward_scale``; SAGE
        normalises each map, so only their shape matters. When the loss or any gradient is NaN or Inf,
        ``finite`` is False, the saliency is all NaN and the parameters' ``.grad`` receive zeros (never
        the bad values), so a caller can fall back to the unmixed batch (the SAGE step does).

    Raises:
        TypeError / ValueError: bad arguments (named), labels outside the model's classes, or a model
            that does not return a (B, num_classes) logits tensor.
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
    pass_size(x.shape[-2], x.shape[-1], scale=scale, size=size)  # the size rules, named
    check_blur(blur_kernel, blur_sigma, x.shape[-2:])
    _check_target(target, x.shape[0], loss)
    result, clean = compute_saliency(
        model, x, target, loss=loss, reduce=reduce, blur_kernel=blur_kernel, blur_sigma=blur_sigma,
        param_grad_weight=param_grad_weight, scale=scale, size=size, check_labels=True,
    )  # fmt: skip
    if clean is not None:
        add_to_grad(clean, backward_scale)
    return result


def add_to_grad(
    clean: CleanGradients, backward_scale: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> None:
    """Accumulate kept clean gradients into the parameters' ``.grad`` (created where None), multiplied by
    ``backward_scale``'s factor (``backward_scale`` of a one: a GradScaler's current scale, on the
    device). ``torch._foreach_add_`` for the gradients that exist: no per-parameter launches."""
    factor = torch.full((), clean.factor, device=clean.flat.device)
    if backward_scale is not None:
        factor = factor * backward_scale(torch.ones((), device=clean.flat.device)).float()
    pieces = torch._foreach_mul(clean.pieces, factor)
    held = [(p, g) for p, g in zip(clean.params, pieces, strict=True) if p.grad is not None]
    for param, piece in zip(clean.params, pieces, strict=True):
        if param.grad is None:
            param.grad = torch.empty_like(param).copy_(piece)  # the parameter's dtype and memory format
    if held:
        torch._foreach_add_([p.grad for p, _ in held], [g.to(p.grad.dtype) for p, g in held])


def compute_saliency(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str,
    reduce: str,
    blur_kernel: int,
    blur_sigma: float,
    param_grad_weight: float,
    scale: float,
    size: int | None = None,
    check_labels: bool = False,
    clean_buffer: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> tuple[SaliencyPass, CleanGradients | None]:
    """:func:`saliency_pass` on trusted arguments, with no host read of a device value.

    Writes no ``.grad``: with ``param_grad_weight = w > 0`` the same backward's parameter gradients
    ``w * d(loss)/d(param)`` come back as :class:`~timm_sage.core.clean.CleanGradients` (float32, on the
    device, with their factor; zeros where the pass was not finite, decided on the device), for the
    SAGE step's :class:`~timm_sage.core.clean.LossWeight` or :func:`saliency_pass`'s ``.grad``; None
    when ``w == 0`` or no parameter received a gradient. ``clean_buffer``: a float32 tensor this call
    may overwrite to hold them (a released earlier one, see :meth:`CleanGradients.release`), used when
    its size and device fit: on a CPU a fresh buffer of the parameters' size costs page faults at every
    step. ``num_classes``: the soft targets' width, checked against the logits' (a shape: no read).
    """
    height, width = x.shape[-2:]
    small = pass_size(height, width, scale=scale, size=size)
    resized = small != (height, width)
    if resized:
        with torch.no_grad():
            inputs = F.interpolate(
                x.detach(), size=small, mode="bilinear", antialias=True, align_corners=False
            )
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        inputs.requires_grad_(True)
    else:
        inputs = x.detach().clone().requires_grad_(True)
    module = model if isinstance(model, nn.Module) else None
    params = (
        [p for p in module.parameters() if p.requires_grad]
        if module is not None and param_grad_weight > 0
        else []
    )
    with torch.enable_grad(), kept_running_statistics(model) if resized else contextlib.nullcontext():
        logits = _logits_of(model, inputs)  # under the caller's autocast, if any
        if num_classes is not None and logits.shape[-1] != num_classes:
            raise ValueError(
                f"num_classes={num_classes}, but the model outputs {logits.shape[-1]} logits per image: "
                f"build the mixer with num_classes={logits.shape[-1]}, or bind the model it was built for"
            )
        if check_labels and not target.is_floating_point():  # the public boundary only: reads values
            num_classes = logits.shape[-1]
            if bool((target < 0).any()) or bool((target >= num_classes).any()):
                raise ValueError(f"target labels must lie in [0, {num_classes - 1}] (the model's outputs)")
        # The loss, its backward, the clean gradient and the maps run in float32 with autocast off, whatever
        # the caller opened: CUDA autocast refuses binary_cross_entropy, and backward passes do not
        # belong under autocast.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            clean_loss = _clean_loss(logits.float(), target, loss)
            loss_scale = saliency_loss_scale(logits.shape[0], logits.shape[1], loss)
            grad, *param_grads = torch.autograd.grad(
                clean_loss * loss_scale, [inputs, *params], allow_unused=True
            )
    with torch.autocast(device_type=x.device.type, enabled=False):
        grad = grad.float().mul_(1.0 / loss_scale)  # exact: a power of two, in float32
        clean_loss = clean_loss.detach()
        present = [(p, g) for p, g in zip(params, param_grads, strict=True) if g is not None]
        flat = _concatenated(present, clean_buffer)
        # NaN and Inf survive a sum, so one total checks the loss and every gradient (a finite total that
        # overflows counts as not finite too), kept on the device.
        totals = [clean_loss, grad.sum(dtype=torch.float32)]
        totals += [flat.sum()] if flat is not None else []
        finite = torch.isfinite(torch.stack(totals).sum())
        clean = None
        if flat is not None:
            # Zeros where the pass was not finite, in place (a 0-dim mask broadcasts): no second buffer.
            clean = CleanGradients(
                [p for p, _ in present], flat.masked_fill_(~finite, 0.0), param_grad_weight / loss_scale
            )
        channel_map = grad.abs().mean(1) if reduce == "mean_abs" else torch.linalg.vector_norm(grad, dim=1)
        if resized:
            # Bilinear interpolation of non-negative values stays non-negative.
            channel_map = F.interpolate(
                channel_map[:, None], size=(height, width), mode="bilinear", align_corners=False
            )[:, 0]
        saliency = torch.where(finite, blur_maps(channel_map, blur_kernel, blur_sigma), math.nan)
    return SaliencyPass(saliency, clean_loss, finite), clean


# ---- the clean loss's parameter gradient: (1 - r) * d l_clean / d params, kept (docs/architecture.md) ----
def _concatenated(
    present: list[tuple[torch.Tensor, torch.Tensor]], buffer: torch.Tensor | None
) -> torch.Tensor | None:
    """The parameter gradients of the scaled backward, concatenated into one float32 buffer (``buffer``
    when its size and device fit): one launch whatever the number of parameters. Their factor
    (``param_grad_weight / loss_scale``) is applied where they are used, in the same pass."""
    if not present:
        return None
    pieces = [g.reshape(-1).float() for _, g in present]
    numel = sum(piece.numel() for piece in pieces)
    fits = (
        buffer is not None
        and buffer.dtype == torch.float32
        and buffer.device == pieces[0].device
        and buffer.numel() == numel
    )
    return torch.cat(pieces, out=buffer) if fits else torch.cat(pieces)


def saliency_map(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str = _D.saliency_loss,
    reduce: str = _D.saliency_reduce,
    blur_kernel: int = _D.blur_kernel,
    blur_sigma: float = _D.blur_sigma,
    scale: float = _D.saliency_scale,
    size: int | None = _D.saliency_size,
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
        size=size,
    ).saliency
