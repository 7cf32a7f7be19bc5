"""The mixing kernels on trusted inputs (docs/algorithm.md sections 2-4): normalise, plan, apply, targets.

Nothing here checks values or reads a device value back to the host: the public, checked versions are
in :mod:`timm_sage.functional`, and the SAGE step (:mod:`timm_sage.core.step`) calls these directly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from timm_sage.core import search


class SagePlan(NamedTuple):
    """Where and how much of each partner goes into each image: computed once, applied once.

    ``translation`` (B, 2) long ``(dy, dx)`` applied to each partner; ``mask`` (B, H, W) float32 in
    [0, 1], the anchor's share per pixel; ``lam`` (B,) float32, the mask's mean (the anchor's label
    share).
    """

    translation: torch.Tensor
    mask: torch.Tensor
    lam: torch.Tensor


def normalise_saliency(
    saliency: torch.Tensor, perm: torch.Tensor, prior: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior-weighted maps ``(s0, s1)`` of docs/algorithm.md section 2, each (B, H, W) float32.

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


def plan(
    saliency: torch.Tensor,
    perm: torch.Tensor,
    prior: torch.Tensor,
    translations: torch.Tensor,
    *,
    search_size: int | None = None,
    chunk_elements: int | None = None,
) -> SagePlan:
    """Search the best of ``translations`` for each image and build its mask and label share.

    ``saliency`` (B, H, W), ``perm`` (B,) long, ``prior`` (B,) float32, ``translations`` (K, 2) long,
    all on one device. No data-dependent Python control flow and no op whose output size depends on
    values: the search, exact or pooled (``search_size``), traces with no graph break and never syncs.
    """
    s0, s1 = normalise_saliency(saliency, perm, prior)
    best = search.best_translation(
        s0, s1, translations, search_size=search_size, chunk_elements=chunk_elements
    )
    translation = translations[best]
    shifted_partner = search.shift_images(s1[:, None], translation)[:, 0]
    mask = search.mixing_mask(s0, shifted_partner)
    return SagePlan(translation, mask, mask.mean((1, 2)))


def apply(x: torch.Tensor, perm: torch.Tensor, plan: SagePlan) -> torch.Tensor:
    """Mixed images ``M * x + (1 - M) * T(x[perm], tau)`` (B, C, H, W), in x's dtype and memory format."""
    partner_images = search.shift_images(x[perm], plan.translation)
    work = torch.promote_types(x.dtype, torch.float32)  # float64 images are mixed in float64
    images = partner_images.to(work).lerp_(x.to(work), plan.mask[:, None].to(work)).to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def one_hot_targets(target: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """(B,) labels -> (B, num_classes) float32 with timm's smoothing (off ``s / C``, on ``1 - s + s / C``);
    (B, num_classes) soft labels are used as given (float32)."""
    if target.is_floating_point():
        return target.float()
    off = label_smoothing / num_classes
    dense = torch.full((target.shape[0], num_classes), off, device=target.device)
    return dense.scatter_(1, target.long().view(-1, 1), 1.0 - label_smoothing + off)


def mix_targets(
    target: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, num_classes: int, label_smoothing: float
) -> torch.Tensor:
    """Soft targets ``lam * y + (1 - lam) * y[perm]`` (B, num_classes) float32; ``lam`` (B,) or 0-dim."""
    dense = one_hot_targets(target, num_classes, label_smoothing)
    lam = lam.to(device=dense.device, dtype=torch.float32).reshape(-1, 1)
    return dense * lam + dense[perm.to(dense.device)] * (1.0 - lam)
