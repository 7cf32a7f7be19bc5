"""Public pure-tensor API of SAGE: saliency, candidate translations, mixing and soft targets.

The contract is SAGE.md (saliency-guided mixup with optimal rearrangements). Every function is
device-agnostic and batched; none keeps state or draws random numbers except
:func:`sample_translations`, which takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage import _checks, _search

SALIENCY_LOSSES = ("bce_softmax", "cross_entropy")
SALIENCY_REDUCTIONS = ("mean_abs", "l2")

__all__ = [
    "SALIENCY_LOSSES",
    "SALIENCY_REDUCTIONS",
    "SaliencyPass",
    "SageMixOutput",
    "blur_maps",
    "mixing_mask",
    "normalise_saliency",
    "saliency_map",
    "saliency_pass",
    "sage_mix",
    "sage_target",
    "sample_translations",
    "translation_scores",
]


class SaliencyPass(NamedTuple):
    """Result of :func:`saliency_pass`: ``saliency`` (B, H, W) float32 and the clean ``loss`` (0-dim)."""

    saliency: torch.Tensor
    loss: torch.Tensor


class SageMixOutput(NamedTuple):
    """Result of :func:`sage_mix`.

    ``images``: (B, C, H, W), dtype of the input; ``lam``: (B,) float32, the anchor's share of each
    mixed image; ``translation``: (B, 2) long, the ``(dy, dx)`` applied to each partner image.
    """

    images: torch.Tensor
    lam: torch.Tensor
    translation: torch.Tensor


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
) -> torch.Tensor:
    """Smoothed saliency (B, H, W) float32 of the live ``model`` on the clean batch ``x``.

    Input gradients only: no parameter ``.grad`` is written. See :func:`saliency_pass` for arguments.
    """
    return saliency_pass(
        model, x, target, loss=loss, reduce=reduce, blur_kernel=blur_kernel, blur_sigma=blur_sigma
    ).saliency


def _pooled_grid(height: int, width: int, search_size: int | None) -> tuple[int, int, int]:
    factor = _search.pooling_factor(height, width, search_size)
    return factor, math.ceil(height / factor), math.ceil(width / factor)


def sample_translations(
    height: int,
    width: int,
    rand_pos: float,
    *,
    generator: torch.Generator | None = None,
    search_size: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw candidate translations without replacement, shared by every image of a batch.

    ``K = max(1, floor((2H-1)(2W-1) * rand_pos))`` of the ``(2H-1)(2W-1)`` shifts with some overlap.
    With ``search_size``, the shifts are drawn on the pooled grid that :func:`sage_mix` searches with
    the same ``search_size`` (so K follows the pooled size) and returned in full-resolution pixels.

    Returns:
        (K, 2) int64 ``(dy, dx)``, on ``device`` (default: the generator's device, else CPU).
    """
    _checks.check_positive_int("height", height)
    _checks.check_positive_int("width", width)
    _checks.check_fraction("rand_pos", rand_pos, open_low=True)
    _checks.check_generator("generator", generator)
    if search_size is not None:
        _checks.check_positive_int("search_size", search_size)
    factor, grid_height, grid_width = _pooled_grid(height, width, search_size)
    span_y, span_x = 2 * grid_height - 1, 2 * grid_width - 1
    count = max(1, math.floor(span_y * span_x * rand_pos))
    draw_device = generator.device if generator is not None else torch.device("cpu")
    flat = torch.randperm(span_y * span_x, generator=generator, device=draw_device)[:count]
    shifts = torch.stack((flat // span_x - (grid_height - 1), flat % span_x - (grid_width - 1)), dim=1)
    if factor > 1:
        shifts = shifts * factor
        shifts[:, 0].clamp_(-(height - 1), height - 1)
        shifts[:, 1].clamp_(-(width - 1), width - 1)
    return shifts.to(device) if device is not None else shifts


def _check_saliency(saliency: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    _checks.check_tensor("saliency", saliency)
    _checks.check_floating("saliency", saliency)
    batch, _, height, width = x_shape
    if saliency.ndim == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.shape != (batch, height, width):
        raise ValueError(
            f"saliency must have shape ({batch}, {height}, {width}) or ({batch}, 1, {height}, {width}) "
            f"to match x {tuple(x_shape)}, got {tuple(saliency.shape)}"
        )
    _checks.check_finite_nonnegative("saliency", saliency)
    return saliency


def _check_prior(prior: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(prior, torch.Tensor):
        if prior.ndim == 0:
            prior = prior.expand(batch)
        if prior.shape != (batch,):
            raise ValueError(f"prior must be a float or a ({batch},) tensor, got shape {tuple(prior.shape)}")
        prior = prior.to(device=device, dtype=torch.float32)
        if not bool(((prior >= 0) & (prior <= 1)).all()):
            raise ValueError("prior must lie in [0, 1] for every image")
        return prior
    return torch.full((batch,), _checks.check_fraction("prior", prior), device=device)


def _check_translations(translations: torch.Tensor, height: int, width: int, name: str) -> torch.Tensor:
    _checks.check_tensor(name, translations)
    if translations.is_floating_point() or translations.is_complex() or translations.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of (dy, dx), got dtype {translations.dtype}")
    if translations.ndim != 2 or translations.shape[1] != 2 or translations.shape[0] == 0:
        raise ValueError(f"{name} must have shape (K, 2) with K >= 1, got {tuple(translations.shape)}")
    translations = translations.long()
    if bool((translations[:, 0].abs() >= height).any()) or bool((translations[:, 1].abs() >= width).any()):
        raise ValueError(
            f"{name} out of range: every (dy, dx) needs |dy| <= {height - 1} and |dx| <= {width - 1} "
            f"for {height}x{width} images"
        )
    return translations


def normalise_saliency(
    saliency: torch.Tensor, perm: torch.Tensor, prior: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior-weighted maps ``(s0, s1)`` of SAGE.md section 2, each (B, H, W) float32.

    ``s0 = prior * s / sum(s)``, ``s1 = (1 - prior) * s[perm] / sum(s[perm])``. A map that is all zeros
    counts as uniform. Scaling by the per-image maximum first keeps huge and denormal values finite.
    """
    # Scale by the peak in the maps' own precision (float64 maps may exceed float32's range), then float32.
    maps = saliency if saliency.dtype == torch.float64 else saliency.float()
    peak = maps.flatten(1).amax(1).view(-1, 1, 1)
    maps = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), 1.0).float()
    maps = maps / maps.sum((1, 2), keepdim=True)
    prior = prior.view(-1, 1, 1)
    return prior * maps, (1 - prior) * maps[perm]


def mixing_mask(
    saliency: torch.Tensor,
    *,
    perm: torch.Tensor,
    prior: float | torch.Tensor,
    translation: torch.Tensor,
) -> torch.Tensor:
    """The mask ``M`` (B, H, W) float32 in [0, 1] for given per-image translations (B, 2)."""
    batch = saliency.shape[0]
    s0, s1 = normalise_saliency(saliency, perm, _check_prior(prior, batch, saliency.device))
    shifted = _search.shift_images(s1[:, None], translation)[:, 0]
    return _search.mixing_mask(s0, shifted)


def translation_scores(
    saliency: torch.Tensor,
    *,
    perm: torch.Tensor,
    prior: float | torch.Tensor,
    translations: torch.Tensor,
) -> torch.Tensor:
    """Exact score ``v(tau)`` (B, K) float32 of each candidate, for inspection and figures."""
    batch, height, width = saliency.shape
    translations = _check_translations(translations, height, width, "translations")
    s0, s1 = normalise_saliency(saliency, perm, _check_prior(prior, batch, saliency.device))
    return _search.translation_scores(s0, s1, translations)


def sage_mix(
    x: torch.Tensor,
    saliency: torch.Tensor,
    *,
    perm: torch.Tensor,
    prior: float | torch.Tensor,
    translations: torch.Tensor,
    search_size: int | None = None,
    chunk_elements: int | None = None,
) -> SageMixOutput:
    """Mix each image with its partner ``x[perm[b]]``, slid to the best of ``translations``.

    Args:
        x: (B, C, H, W) floating images (float32, float16 or bfloat16; the search runs in float32).
        saliency: (B, H, W) or (B, 1, H, W) non-negative, smoothed maps; an all-zero map is uniform.
        perm: (B,) integer permutation of the batch; ``perm[b]`` is image b's partner (may be b).
        prior: anchor share ``alpha``, a float in [0, 1] or a (B,) tensor.
        translations: (K, 2) integer candidate ``(dy, dx)``, ``|dy| < H``, ``|dx| < W``.
        search_size: None for the exact search; an int searches maps sum-pooled to at most that size
            and keeps the candidate whose pooled shift scores best (mask and lam stay full-resolution).
        chunk_elements: memory bound of the search (float32 elements per chunk); default by device.

    Returns:
        :class:`SageMixOutput` (images, lam, translation), detached from any graph.

    Raises:
        TypeError: non-tensor inputs, integer images or saliency, non-integer perm or translations.
        ValueError: shapes that do not match ``x``, negative/NaN/Inf saliency, ``perm`` not a
            permutation, ``prior`` outside [0, 1], empty or out-of-range ``translations``.
    """
    _checks.check_tensor("x", x)
    _checks.check_floating("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    batch, _, height, width = x.shape
    with torch.no_grad():
        saliency = _check_saliency(saliency, x.shape).detach().to(x.device)
        perm = _checks.check_permutation("perm", perm, batch).to(x.device)
        prior_t = _check_prior(prior, batch, x.device)
        translations = _check_translations(translations, height, width, "translations").to(x.device)
        if search_size is not None:
            _checks.check_positive_int("search_size", search_size)
        if chunk_elements is not None:
            _checks.check_positive_int("chunk_elements", chunk_elements)
        return _sage_mix_core(x.detach(), saliency, perm, prior_t, translations, search_size, chunk_elements)


def _sage_mix_core(
    x: torch.Tensor,
    saliency: torch.Tensor,
    perm: torch.Tensor,
    prior: torch.Tensor,
    translations: torch.Tensor,
    search_size: int | None,
    chunk_elements: int | None,
) -> SageMixOutput:
    """:func:`sage_mix` on checked inputs, with no data-dependent Python control flow (compilable).

    ``x`` (B, C, H, W) floating, ``saliency`` (B, H, W), ``perm`` (B,) long, ``prior`` (B,) float32,
    ``translations`` (K, 2) long, all on x's device. The exact search (``search_size=None``) traces
    with no graph break; the pooled one breaks once at ``torch.unique``.
    """
    s0, s1 = normalise_saliency(saliency, perm, prior)
    best = _search.best_translation(
        s0, s1, translations, search_size=search_size, chunk_elements=chunk_elements
    )
    translation = translations[best]
    shifted_partner = _search.shift_images(s1[:, None], translation)[:, 0]
    mask = _search.mixing_mask(s0, shifted_partner)
    lam = mask.mean((1, 2))
    partner_images = _search.shift_images(x[perm], translation)
    work = torch.promote_types(x.dtype, torch.float32)  # float64 images are mixed in float64
    images = partner_images.to(work).lerp_(x.to(work), mask[:, None].to(work)).to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        images = images.contiguous(memory_format=torch.channels_last)
    return SageMixOutput(images, lam, translation)


def sage_target(
    target: torch.Tensor,
    *,
    perm: torch.Tensor,
    lam: torch.Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Soft targets ``lam * y + (1 - lam) * y[perm]`` with timm's label smoothing.

    Args:
        target: (B,) integer labels in [0, num_classes) or (B, num_classes) soft labels.
        perm: (B,) permutation used for mixing.
        lam: (B,) anchor shares (or a float / 0-dim tensor for one per batch).
        num_classes: number of classes.
        label_smoothing: smoothing as ``timm.data.mixup_target``: off value ``s / C``,
            on value ``1 - s + s / C``; not applied to soft labels, which are used as given.

    Returns:
        (B, num_classes) float32 rows summing to 1 (for integer labels or soft labels that do).
    """
    _checks.check_tensor("target", target)
    _checks.check_positive_int("num_classes", num_classes)
    smoothing = _checks.check_fraction("label_smoothing", label_smoothing)
    batch = target.shape[0] if target.ndim else 0
    if target.is_floating_point():
        if target.shape != (batch, num_classes):
            raise ValueError(f"soft target must have shape (B, {num_classes}), got {tuple(target.shape)}")
        one_hot = target.float()
        _checks.check_finite_nonnegative("target", one_hot)
    else:
        if target.ndim != 1:
            raise ValueError(
                f"target must be (B,) labels or (B, num_classes) soft labels, got {tuple(target.shape)}"
            )
        if bool((target < 0).any()) or bool((target >= num_classes).any()):
            raise ValueError(
                f"target labels must lie in [0, {num_classes - 1}] for num_classes={num_classes}"
            )
        off = smoothing / num_classes
        one_hot = torch.full((batch, num_classes), off, device=target.device)
        one_hot.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)
    perm = _checks.check_permutation("perm", perm, batch).to(one_hot.device)
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=one_hot.device).reshape(-1, 1)
    return one_hot * lam_t + one_hot[perm] * (1.0 - lam_t)
