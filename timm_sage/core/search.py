"""The translation-search kernel behind :func:`timm_sage.functional.sage_mix`.

Everything here works on already-normalised float32 saliency maps and trusts its inputs:
validation lives in :mod:`timm_sage.functional`. Nothing loops over the images of a batch;
candidate translations are scored in chunks whose size bounds the temporary memory.

Conventions: a translation ``(dy, dx)`` moves content from pixel ``(i, j)`` to ``(i + dy, j + dx)``;
what leaves the frame is lost and what is uncovered is zero (no wrap-around).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

# Denominator floor of the mask, as in the reference code: M = s0 / max(s0 + t, MASK_EPS).
MASK_EPS = 1e-16

# The kernel is memory-bound: one chunk's two (B, k, H*W) float32 buffers (the shifted maps and the
# gain) should stay in the core's L2 cache. On the CPU the budget is read from the cache size; a 2 MB L2
# gives 2^18 elements, which measured fastest on this project's 2-core box (docs/benchmarks.md). GPUs
# want far bigger launches.
_FALLBACK_CPU_CHUNK_ELEMENTS = 1 << 18
_CUDA_CHUNK_ELEMENTS = 1 << 26


@functools.lru_cache(maxsize=4)
def _cpu_chunk_elements(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Half the L2 cache of CPU 0 in float32 elements (two buffers per chunk), a power of two; the
    fallback where the cache size cannot be read (not Linux)."""
    for index in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if level != "2" or kind not in ("Unified", "Data"):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
        try:
            size_bytes = int(size.rstrip("KM")) * scale
        except ValueError:
            continue
        elements = size_bytes // (2 * 4)
        return max(1 << 14, 1 << (elements.bit_length() - 1))
    return _FALLBACK_CPU_CHUNK_ELEMENTS


# Read once, at import: a constant inside the kernel, so torch.compile traces it without a graph break.
_CPU_CHUNK_ELEMENTS = _cpu_chunk_elements()


def default_chunk_elements(device: torch.device) -> int:
    """Chunk budget (number of float32 elements of shifted maps evaluated at once) for a device."""
    return _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _CUDA_CHUNK_ELEMENTS


def _shift_windows(maps: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """All H x W windows of the maps padded with ``fill``, as a view.

    Args:
        maps: (B, H, W) float.

    Returns:
        (B, 2H-1, 2W-1, H, W) view; ``[b, H-1-dy, W-1-dx]`` is map b shifted by ``(dy, dx)``, with
        ``fill`` where nothing is shifted in.
    """
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (width - 1, width - 1, height - 1, height - 1), value=fill)
    return padded.unfold(1, height, 1).unfold(2, width, 1)


# The overlap kernel pays a few microseconds of Python per candidate; below this many map elements per
# candidate (B * H * W) the batched windows kernel is faster (measured on this project's 2-core box:
# B=8 32x32 K=396 windows 9 ms, overlap 15 ms; B=8 64x64 K=161 windows 15 ms, overlap 8 ms).
_OVERLAP_MIN_ELEMENTS = 1 << 14
SEARCH_KERNELS = ("windows", "overlap")


def _reciprocal(maps: torch.Tensor) -> torch.Tensor:
    """``1 / maps`` (zeros give +inf), the form in which the search reads the maps."""
    return torch.reciprocal(maps)


def covered_sums(partner: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
    """``sum(t)`` over the frame of each shifted partner ``t``: the partner's sum over the rectangle that
    stays in the frame, from a summed-area table (float64, so that differences of large prefix sums
    keep float32 accuracy). (B, H, W), (K, 2) -> (B, K) float32; gathers only, no host read."""
    batch, height, width = partner.shape
    table = F.pad(partner.double().cumsum(1).cumsum(2), (1, 0, 1, 0)).reshape(batch, -1)
    dy, dx = translations[:, 0].to(partner.device), translations[:, 1].to(partner.device)
    top, bottom = (-dy).clamp_min(0), height - dy.clamp_min(0)
    left, right = (-dx).clamp_min(0), width - dx.clamp_min(0)
    stride = width + 1

    def corner(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return table[:, row * stride + col]

    total = corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)
    return total.float()


def choose_kernel(anchor: torch.Tensor, translations: torch.Tensor) -> str:
    """The faster search kernel for these maps (metadata only): ``"overlap"`` on the CPU, in eager mode,
    when a candidate covers at least ``_OVERLAP_MIN_ELEMENTS`` map elements; ``"windows"`` otherwise
    (GPUs, where a launch per candidate would dominate, and ``torch.compile``, which fuses its passes)."""
    batch, height, width = anchor.shape
    if (
        anchor.device.type == "cpu"
        and translations.device.type == "cpu"
        and batch * height * width >= _OVERLAP_MIN_ELEMENTS
        and not torch.compiler.is_compiling()
    ):
        return "overlap"
    return "windows"


def translation_scores(
    anchor: torch.Tensor,
    partner: torch.Tensor,
    translations: torch.Tensor,
    *,
    chunk_elements: int | None = None,
    kernel: str | None = None,
) -> torch.Tensor:
    """Score ``v(tau)`` of every candidate translation for every image (docs/algorithm.md section 3).

    ``v(tau) = sum[s0 * M + t * (1 - M)]`` with ``t`` the partner map shifted by ``tau`` and
    ``M = s0 / (s0 + t)``. Since ``s0 * M + t * (1 - M) = s0 + t - 2 * s0 * t / (s0 + t)``, it is computed
    as ``sum(s0) + sum(t) - 2 * sum(1 / (1 / s0 + 1 / t))``: ``sum(t)`` from a summed-area table
    (:func:`covered_sums`), the harmonic term from the maps' reciprocals (a zero gives +inf and its
    term 0, as in the reference, whose ``max(s0 + t, 1e-16)`` floor changes a term by less than 1e-16).
    Per candidate and pixel that is one add, one reciprocal and one sum, where the direct form takes six
    passes: the kernel is memory-bound, so the passes are its cost (docs/benchmarks.md).

    Two kernels compute the same sums (equal up to float32 summation order):

    * ``"windows"``: candidates in chunks of ``k``, each a (B, k, H*W) gather from an inf-padded view of
      the partners' reciprocals; few launches (GPUs, ``torch.compile``), full-frame and memory-bound:
      four element passes (gather write, add, reciprocal, sum), 32 bytes of traffic per element.
    * ``"overlap"``: one candidate at a time, only over the rectangle where the shifted partner overlaps
      the frame (elsewhere the term is zero): on average a quarter of the frame for the uniform
      candidates of SAGE, in slices that stay in cache. Several times faster on a CPU from 64 x 64 up.

    Args:
        anchor: (B, H, W) float32, the prior-weighted anchor maps ``s0``.
        partner: (B, H, W) float32, the prior-weighted partner maps ``s1`` (already permuted).
        translations: (K, 2) long, candidate ``(dy, dx)`` with ``|dy| < H`` and ``|dx| < W``.
        chunk_elements: bound on ``B * k * H * W`` for one chunk of the windows kernel.
        kernel: ``"windows"``, ``"overlap"`` or None (:func:`choose_kernel`). The overlap kernel reads
            the candidates on the host: give it CPU ``translations``.

    Returns:
        (B, K) float32 scores.
    """
    if kernel is None:
        kernel = choose_kernel(anchor, translations)
    elif kernel not in SEARCH_KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(SEARCH_KERNELS)} or None, got {kernel!r}")
    if kernel == "overlap":
        return _overlap_scores(anchor, partner, translations)
    return _windows_scores(anchor, partner, translations, chunk_elements)


def _overlap_scores(anchor: torch.Tensor, partner: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
    batch, height, width = anchor.shape
    inv_anchor, inv_partner = _reciprocal(anchor), _reciprocal(partner)
    harmonic = torch.empty(batch, translations.shape[0], dtype=torch.float32, device=anchor.device)
    # Host values of a host tensor (the candidates are drawn on the host): no device read.
    for k, (dy, dx) in enumerate(translations.tolist()):
        covered = inv_anchor[:, max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)]
        shifted = inv_partner[:, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        torch.sum(torch.add(covered, shifted).reciprocal_(), dim=(1, 2), out=harmonic[:, k])
    return _combine(anchor, partner, translations, harmonic)


def _windows_scores(
    anchor: torch.Tensor, partner: torch.Tensor, translations: torch.Tensor, chunk_elements: int | None
) -> torch.Tensor:
    batch, height, width = anchor.shape
    pixels = height * width
    budget = chunk_elements or default_chunk_elements(anchor.device)
    chunk = max(1, budget // max(1, batch * pixels))
    windows = _shift_windows(_reciprocal(partner), fill=math.inf)
    rows = (height - 1 - translations[:, 0]).to(anchor.device)
    cols = (width - 1 - translations[:, 1]).to(anchor.device)
    inv_anchor = _reciprocal(anchor).reshape(batch, 1, pixels)
    # Per chunk: the gather, then one add, one reciprocal and one sum over one (B, k, H*W) buffer. The
    # sums go straight into one output (no small tensor per chunk between the large buffers, which
    # fragments the CPU heap: measured +11 MB per chunk at B=64, 224 x 224 without it).
    # Candidates first, so that each chunk's rows of the output are contiguous (an ``out=`` that
    # torch.compile traces).
    harmonic = torch.empty(translations.shape[0], batch, dtype=torch.float32, device=anchor.device)
    for start in range(0, translations.shape[0], chunk):
        shifted = windows[:, rows[start : start + chunk], cols[start : start + chunk]].reshape(
            batch, -1, pixels
        )
        terms = shifted.add_(inv_anchor).reciprocal_().transpose(0, 1)
        torch.sum(terms, dim=-1, out=harmonic[start : start + chunk])
    return _combine(anchor, partner, translations, harmonic.t())


def _combine(
    anchor: torch.Tensor, partner: torch.Tensor, translations: torch.Tensor, harmonic: torch.Tensor
) -> torch.Tensor:
    """``sum(s0) + sum(t) - 2 * harmonic``, (B, K) float32."""
    covered = covered_sums(partner, translations)
    return covered.sub_(harmonic, alpha=2.0).add_(anchor.sum((1, 2)).unsqueeze(1))


def shift_images(images: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Shift each image of a batch by its own translation, filling uncovered pixels with zero.

    Args:
        images: (B, C, H, W) any dtype.
        translation: (B, 2) long ``(dy, dx)``, one per image.

    Returns:
        (B, C, H, W) contiguous tensor of ``images``' dtype and device.
    """
    batch, channels, height, width = images.shape
    translation = translation.to(images.device)
    src_rows = torch.arange(height, device=images.device) - translation[:, :1]  # (B, H)
    src_cols = torch.arange(width, device=images.device) - translation[:, 1:]  # (B, W)
    # Out-of-frame sources point at an appended zero row / column.
    src_rows = torch.where((src_rows >= 0) & (src_rows < height), src_rows, height)
    src_cols = torch.where((src_cols >= 0) & (src_cols < width), src_cols, width)
    padded = F.pad(images, (0, 1, 0, 1)).reshape(batch, channels, (height + 1) * (width + 1))
    flat_index = (src_rows[:, :, None] * (width + 1) + src_cols[:, None, :]).reshape(batch, 1, -1)
    shifted = padded.gather(2, flat_index.expand(batch, channels, height * width))
    return shifted.reshape(batch, channels, height, width)


def mixing_mask(anchor: torch.Tensor, shifted_partner: torch.Tensor) -> torch.Tensor:
    """``M = s0 / max(s0 + t, 1e-16)``, elementwise; (B, H, W) float32 in [0, 1]."""
    return anchor / (anchor + shifted_partner).clamp_min(MASK_EPS)


# search_size="auto": the search's memory traffic per image is about 32 bytes x K candidates x the
# grid's pixels, with K = rand_pos x (2h-1)(2w-1), about 4 rand_pos x the grid's pixels: it grows as the
# square of the grid's pixel count, where a model's step grows as the image's pixel count. "auto" keeps
# grid_pixels^2 <= AUTO_EXACT_SIDE^2 x image_pixels, so the search's share of a step stays at most its
# share with the exact search on a 48 x 48 image: exact up to 48 x 48 (every CIFAR and Fashion-MNIST size,
# the reference code's search), pooled above (224 x 224: 75 x 75, an 80x smaller search). docs/algorithm.md,
# "Where we depart from the reference code".
AUTO_EXACT_SIDE = 48


def auto_pooling_factor(height: int, width: int) -> int:
    """The smallest integer factor whose sum-pooled grid ``(ceil(H/f), ceil(W/f))`` has at most
    ``sqrt(AUTO_EXACT_SIDE^2 * H * W)`` pixels: 1 (the exact search) for every image of at most 48 x 48
    pixels; 2 at 64 x 64 and 128 x 128, 3 at 224 x 224, 4 at 512 x 512."""
    budget = AUTO_EXACT_SIDE * AUTO_EXACT_SIDE * height * width
    factor = 1
    while (math.ceil(height / factor) * math.ceil(width / factor)) ** 2 > budget:
        factor += 1
    return factor


def pooling_factor(height: int, width: int, search_size: int | str | None) -> int:
    """Integer factor that brings ``max(height, width)`` down to at most ``search_size``; 1 for None (the
    exact search); :func:`auto_pooling_factor` for ``"auto"``."""
    if search_size is None:
        return 1
    if search_size == "auto":
        return auto_pooling_factor(height, width)
    return max(1, math.ceil(max(height, width) / search_size))


def pool_maps(maps: torch.Tensor, factor: int) -> torch.Tensor:
    """Sum-pool (B, H, W) maps by ``factor`` (partial windows at the border kept), preserving totals."""
    if factor == 1:
        return maps
    return F.avg_pool2d(maps[:, None], factor, factor, ceil_mode=True, divisor_override=1)[:, 0]


def pooled_shifts(translations: torch.Tensor, height: int, width: int, factor: int) -> torch.Tensor:
    """Each candidate's nearest shift on the grid sum-pooled by ``factor``: (K, 2) long, on the
    candidates' device, clamped to the pooled maps' range. Elementwise: no host read."""
    pooled_height, pooled_width = math.ceil(height / factor), math.ceil(width / factor)
    pooled = torch.round(translations.double() / factor).long()
    rows = pooled[:, 0].clamp(-(pooled_height - 1), pooled_height - 1)
    cols = pooled[:, 1].clamp(-(pooled_width - 1), pooled_width - 1)
    return torch.stack((rows, cols), dim=1)


def first_of_each_pooled_shift(
    translations: torch.Tensor, height: int, width: int, search_size: int | str | None
) -> torch.Tensor:
    """Drop the candidates whose pooled shift (:func:`pooled_shifts`) an earlier candidate already has,
    keeping the order: the pooled search then scores each pooled shift once and picks the same
    candidate (the first of the best). On the host, where candidates are drawn (it reads values: give
    it CPU tensors). Candidates from :func:`timm_sage.functional.sample_translations` with the same
    ``search_size`` are distinct on the pooled grid already and come back unchanged.

    Args:
        translations: (K, 2) long CPU tensor of candidate ``(dy, dx)``.

    Returns:
        (K', 2) long, K' <= K, a subset of the rows of ``translations`` in their order.
    """
    factor = pooling_factor(height, width, search_size)
    if factor == 1 or translations.shape[0] < 2:
        return translations
    pooled = pooled_shifts(translations, height, width, factor)
    span = 2 * max(math.ceil(height / factor), math.ceil(width / factor)) + 1
    keys = ((pooled[:, 0] + span) * (2 * span + 1) + pooled[:, 1] + span).tolist()
    seen: set[int] = set()
    keep = [k for k, key in enumerate(keys) if not (key in seen or seen.add(key))]
    return translations if len(keep) == len(keys) else translations[keep]


def best_translation(
    anchor: torch.Tensor,
    partner: torch.Tensor,
    translations: torch.Tensor,
    *,
    search_size: int | str | None = None,
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """Index of the best-scoring candidate for each image, the first one on ties.

    With ``search_size``, maps are sum-pooled by :func:`pooling_factor` and each candidate is scored
    at its nearest pooled shift. Candidates that share a pooled shift are scored once each time they
    appear (same score, so the first wins); :func:`first_of_each_pooled_shift` drops the repeats on
    the host beforehand (the public ``sage_mix`` and ``plan`` do; the SAGE step's candidates have
    none). No op here reads a value back or sizes an output from values.

    Args:
        anchor, partner: (B, H, W) float32 prior-weighted maps (partner already permuted).
        translations: (K, 2) long candidates.

    Returns:
        (B,) long indices into ``translations``.
    """
    height, width = anchor.shape[-2:]
    factor = pooling_factor(height, width, search_size)
    if factor == 1:
        return translation_scores(anchor, partner, translations, chunk_elements=chunk_elements).argmax(1)
    pooled = pooled_shifts(translations, height, width, factor)
    scores = translation_scores(
        pool_maps(anchor, factor), pool_maps(partner, factor), pooled, chunk_elements=chunk_elements
    )
    return scores.argmax(1)
