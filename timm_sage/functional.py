"""Public pure-tensor API of SAGE: saliency, candidate translations, mixing and soft targets.

The algorithm is SAGE (saliency-guided mixup with optimal rearrangements, Ma et al., BMVC 2022), as
docs/algorithm.md states it. Every function is device-agnostic and batched; none keeps state or draws
random numbers except :func:`sample_translations`, which takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from timm_sage.config import REARRANGEMENTS, SALIENCY_LOSSES, SALIENCY_REDUCTIONS
from timm_sage.core import checks as _checks
from timm_sage.core import mixing as _mixing
from timm_sage.core import search as _search
from timm_sage.core.mixing import SagePlan, normalise_saliency
from timm_sage.core.saliency import SaliencyPass, blur_maps, saliency_map, saliency_pass
from timm_sage.core.step import SageDraws

__all__ = [
    "SALIENCY_LOSSES",
    "REARRANGEMENTS",
    "SALIENCY_REDUCTIONS",
    "SaliencyPass",
    "SageMixOutput",
    "SageParams",
    "SagePlan",
    "apply",
    "blur_maps",
    "check_saliency",
    "mixing_mask",
    "normalise_saliency",
    "plan",
    "saliency_map",
    "saliency_pass",
    "sage_mix",
    "sage_target",
    "sample_sage_params",
    "sample_translations",
    "translation_scores",
]


class SageMixOutput(NamedTuple):
    """Result of :func:`sage_mix`.

    ``images``: (B, C, H, W), dtype of the input; ``lam``: (B,) float32, the anchor's share of each
    mixed image; ``translation``: (B, 2) long, the ``(dy, dx)`` applied to each partner image.
    """

    images: torch.Tensor
    lam: torch.Tensor
    translation: torch.Tensor


def _pooled_grid(height: int, width: int, search_size: int | str | None) -> tuple[int, int, int]:
    factor = _search.pooling_factor(height, width, search_size)
    return factor, math.ceil(height / factor), math.ceil(width / factor)


def sample_translations(
    height: int,
    width: int,
    rand_pos: float,
    *,
    generator: torch.Generator | None = None,
    search_size: int | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw candidate translations without replacement, shared by every image of a batch.

    ``K = max(1, floor((2H-1)(2W-1) * rand_pos))`` of the ``(2H-1)(2W-1)`` shifts with some overlap.
    With ``search_size``, the shifts are drawn on the pooled grid that :func:`sage_mix` searches with
    the same ``search_size`` (so K follows the pooled size) and returned in full-resolution pixels;
    being drawn without replacement there, no two share a pooled shift (nothing to de-duplicate).

    Returns:
        (K, 2) int64 ``(dy, dx)``, on ``device`` (default: the generator's device, else CPU).
    """
    _checks.check_positive_int("height", height)
    _checks.check_positive_int("width", width)
    _checks.check_fraction("rand_pos", rand_pos, open_low=True)
    _checks.check_generator("generator", generator)
    _checks.check_search_size("search_size", search_size)
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


# The random draws of one SAGE batch (perm, prior, translations, clean): the step's SageDraws.
SageParams = SageDraws


def sample_sage_params(
    batch: int,
    height: int,
    width: int,
    *,
    alpha: float,
    upper_lambda: float,
    rand_pos: float,
    generator: torch.Generator,
    search_size: int | str | None = None,
    rng: np.random.Generator | None = None,
    rearrangement: str = "search",
    clean_share: float = 0.0,
) -> SageParams:
    """Draw one batch's partner permutation, prior ``Beta(alpha, alpha) * upper_lambda`` and candidates.

    The Beta draw comes from ``rng``; without one, a numpy generator is seeded from ``generator``, so the
    torch generator alone fixes every draw. ``perm`` and ``translations`` come from ``generator``, a CPU
    generator (a CUDA one is a ValueError naming ``generator``): the draws are host tensors, which the
    SAGE step sends to the device in one copy.

    ``rearrangement`` chooses the candidates (:data:`REARRANGEMENTS`): ``"search"`` draws
    :func:`sample_translations`' K shifts (the paper); ``"none"`` gives the single zero shift;
    ``"random"`` gives one shift drawn uniformly from all ``(2H-1)(2W-1)``, shared by the batch. With a
    single candidate :func:`sage_mix` has nothing to choose, so the last two are the ablations "no
    rearrangement" and "random rearrangement" with everything else unchanged.

    ``clean_share`` in [0, 1] (``1 - update_ratio`` with ``clean_term="in_batch"``): ``clean`` marks
    exactly ``round(clean_share * batch)`` images (Python's ``round``; possibly none), chosen by a
    ``randperm`` of ``generator`` drawn after the others, so the other draws do not change; None when
    ``clean_share`` is 0 (nothing is drawn).
    """
    _checks.check_choice("rearrangement", rearrangement, REARRANGEMENTS)
    _checks.check_fraction("clean_share", clean_share)
    _checks.check_host_generator("generator", generator)
    if rng is None:
        rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))
    prior = float(rng.beta(alpha, alpha)) * upper_lambda
    perm = torch.randperm(batch, generator=generator)
    if rearrangement == "search":
        translations = sample_translations(
            height, width, rand_pos, generator=generator, search_size=search_size
        )
    elif rearrangement == "none":
        translations = torch.zeros(1, 2, dtype=torch.long)
    else:
        # rand_pos = 0 would still give K = 1; a tiny positive fraction does the same through one path.
        translations = sample_translations(height, width, 1e-12, generator=generator)
    clean = None
    if clean_share > 0:
        clean = torch.zeros(batch, dtype=torch.bool)
        clean[torch.randperm(batch, generator=generator)[: round(clean_share * batch)]] = True
    return SageParams(perm, prior, translations, clean)


def check_saliency(saliency: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """(B, H, W) maps of images of shape ``x_shape``: floating, matching shape, finite and non-negative."""
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


def _check_mix_inputs(
    x_shape: torch.Size,
    saliency: torch.Tensor,
    perm: torch.Tensor,
    prior: float | torch.Tensor,
    translations: torch.Tensor,
    search_size: int | str | None,
    chunk_elements: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The public boundary of :func:`plan` and :func:`sage_mix`: every argument checked once, moved to
    ``device``; returns ``(saliency (B, H, W), perm, prior (B,), translations (K, 2))``."""
    batch, _, height, width = x_shape
    saliency = check_saliency(saliency, x_shape).detach().to(device)
    perm = _checks.check_permutation("perm", perm, batch).to(device)
    translations = _check_translations(translations, height, width, "translations")
    if _checks.check_search_size("search_size", search_size) is not None:
        # Repeated pooled shifts are dropped here, on the host, so the device never de-duplicates.
        translations = _search.first_of_each_pooled_shift(translations.cpu(), height, width, search_size)
    translations = translations.to(device)
    if chunk_elements is not None:
        _checks.check_positive_int("chunk_elements", chunk_elements)
    return saliency, perm, _check_prior(prior, batch, device), translations


def _check_images(x: torch.Tensor) -> None:
    _checks.check_tensor("x", x)
    _checks.check_floating("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")


def plan(
    saliency: torch.Tensor,
    *,
    perm: torch.Tensor,
    prior: float | torch.Tensor,
    translations: torch.Tensor,
    search_size: int | str | None = None,
    chunk_elements: int | None = None,
) -> SagePlan:
    """The SAGE plan of a batch: best translation, mask and label share per image (no images needed).

    Args:
        saliency: (B, H, W) or (B, 1, H, W) non-negative, smoothed maps; an all-zero map is uniform.
        perm, prior, translations, search_size, chunk_elements: as :func:`sage_mix`.

    Returns:
        :class:`SagePlan` (translation (B, 2) long, mask (B, H, W) float32, lam (B,) float32), on the
        saliency's device. Apply it to images (or to any per-pixel target) with :func:`apply`.
    """
    _checks.check_tensor("saliency", saliency)
    if saliency.ndim == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.ndim != 3:
        raise ValueError(f"saliency must have shape (B, H, W) or (B, 1, H, W), got {tuple(saliency.shape)}")
    batch, height, width = saliency.shape
    shape = torch.Size((batch, 1, height, width))
    with torch.no_grad():
        saliency, perm, prior_t, translations = _check_mix_inputs(
            shape, saliency, perm, prior, translations, search_size, chunk_elements, saliency.device
        )
        return _mixing.plan(
            saliency, perm, prior_t, translations, search_size=search_size, chunk_elements=chunk_elements
        )


def apply(x: torch.Tensor, *, perm: torch.Tensor, plan: SagePlan) -> torch.Tensor:
    """Mixed images ``M * x + (1 - M) * T(x[perm], tau)`` (B, C, H, W) of a :func:`plan`, x's dtype."""
    _check_images(x)
    batch, _, height, width = x.shape
    if not isinstance(plan, SagePlan):
        raise TypeError(f"plan must be a SagePlan (from functional.plan), got {type(plan).__name__}")
    if plan.mask.shape != (batch, height, width) or plan.translation.shape != (batch, 2):
        raise ValueError(f"plan was made for masks {tuple(plan.mask.shape)}, not for x {tuple(x.shape)}")
    perm = _checks.check_permutation("perm", perm, batch).to(x.device)
    moved = SagePlan(*(t.to(x.device) for t in plan))
    with torch.no_grad():
        return _mixing.apply(x.detach(), perm, moved)


def sage_mix(
    x: torch.Tensor,
    saliency: torch.Tensor,
    *,
    perm: torch.Tensor,
    prior: float | torch.Tensor,
    translations: torch.Tensor,
    search_size: int | str | None = None,
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
            and keeps the candidate whose pooled shift scores best (mask and lam stay full-resolution);
            ``"auto"`` picks the grid from the image size (exact up to 48 x 48,
            :func:`timm_sage.core.search.auto_pooling_factor`).
        chunk_elements: memory bound of the batched search kernel (float32 elements per chunk); default
            by device. The CPU's overlap kernel, used for maps of 16,384 elements or more per candidate,
            holds one candidate at a time and ignores it.

    Returns:
        :class:`SageMixOutput` (images, lam, translation), detached from any graph.

    Raises:
        TypeError: non-tensor inputs, integer images or saliency, non-integer perm or translations.
        ValueError: shapes that do not match ``x``, negative/NaN/Inf saliency, ``perm`` not a
            permutation, ``prior`` outside [0, 1], empty or out-of-range ``translations``.
    """
    _check_images(x)
    with torch.no_grad():
        saliency, perm, prior_t, translations = _check_mix_inputs(
            x.shape, saliency, perm, prior, translations, search_size, chunk_elements, x.device
        )
        return _sage_mix_core(x.detach(), saliency, perm, prior_t, translations, search_size, chunk_elements)


def _sage_mix_core(
    x: torch.Tensor,
    saliency: torch.Tensor,
    perm: torch.Tensor,
    prior: torch.Tensor,
    translations: torch.Tensor,
    search_size: int | str | None,
    chunk_elements: int | None,
) -> SageMixOutput:
    """:func:`sage_mix` on checked inputs: the core's plan, then apply (compilable, no host reads)."""
    sage_plan = _mixing.plan(
        saliency, perm, prior, translations, search_size=search_size, chunk_elements=chunk_elements
    )
    return SageMixOutput(_mixing.apply(x, perm, sage_plan), sage_plan.lam, sage_plan.translation)


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
        _checks.check_finite_nonnegative("target", target)
    else:
        if target.ndim != 1:
            raise ValueError(
                f"target must be (B,) labels or (B, num_classes) soft labels, got {tuple(target.shape)}"
            )
        if bool((target < 0).any()) or bool((target >= num_classes).any()):
            raise ValueError(
                f"target labels must lie in [0, {num_classes - 1}] for num_classes={num_classes}"
            )
    perm = _checks.check_permutation("perm", perm, batch)
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=target.device).reshape(-1)
    if lam_t.numel() not in (1, batch):
        raise ValueError(f"lam must be a float or a ({batch},) tensor, got {lam_t.numel()} values")
    if not bool(((lam_t >= 0) & (lam_t <= 1)).all()):  # NaN fails both comparisons
        raise ValueError("lam must lie in [0, 1] (and not be NaN) for every image")
    return _mixing.mix_targets(target, perm, lam_t, num_classes, smoothing)
