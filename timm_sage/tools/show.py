"""``timm-sage show``: PNG figures of what SAGE makes from real images.

Three figures, written to ``OUTDIR``:

- ``comparison.png`` (the paper's Figure 1): per pair, the two inputs, then Mixup, CutMix and SAGE, each
  titled with its soft label;
- ``anatomy.png`` (the paper's Figures 3 and 4): one SAGE mix taken apart: both images, both saliency
  maps, the mask ``M``, the score ``v(tau)`` over every candidate translation with the chosen one marked,
  the result and plain mixup for contrast;
- ``sources.png``: the saliency maps of every ``saliency_source`` (gradient, cam, features) side by side for
  the same images, from the live model and from an EMA copy of it (``saliency_model``), each map on its own
  colour scale (SAGE normalises every map to its prior share, so only its shape matters).

The figure data (:func:`comparison_data`, :func:`anatomy_data`) is computed apart from the plotting, so it
can be checked without looking at pixels. matplotlib is imported inside the plotting functions only (the
``[viz]`` extra); importing this module does not import it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from timm_sage import functional
from timm_sage._atomic import atomic_path
from timm_sage.config import SAGE_DEFAULTS as _D
from timm_sage.config import SageConfig, add_option_arguments
from timm_sage.core import checks as _checks
from timm_sage.core.feature_saliency import feature_saliency, read_head
from timm_sage.data import idx as _idx
from timm_sage.tools import provenance
from timm_sage.tools.show_data import (
    DEFAULT_MODEL,
    Batch,
    build_model,
    load_display_batch,
    load_images,
    warm_up,
)

__all__ = [
    "ANATOMY_SIZE_PX",
    "AnatomyData",
    "SourcesData",
    "ComparisonData",
    "add_arguments",
    "all_translations",
    "anatomy_data",
    "build_model",
    "comparison_data",
    "sources_data",
    "sources_size_px",
    "grid_size_px",
    "pair_permutation",
    "plot_anatomy",
    "plot_comparison",
    "plot_sources",
    "run",
    "show",
    "show_command",
]

DPI = 80
_CELL_INCHES = (2.0, 2.25)  # one panel of the comparison grid: 160 x 180 pixels
_ANATOMY_INCHES = (10.0, 5.5)  # 800 x 440 pixels
ANATOMY_SIZE_PX = (int(_ANATOMY_INCHES[0] * DPI), int(_ANATOMY_INCHES[1] * DPI))
COLUMNS = ("A", "B", "Mixup", "CutMix", "SAGE")
RECORD = "show.json"  # beside the PNGs: what drew them (timm_sage.tools.provenance)
BATCH_SIZE = 32  # display batch; the filler images only steady BatchNorm's batch statistics
SOURCE_COLUMNS = ("gradient", "cam", "features")
FIGURES = ("comparison", "anatomy", "sources")
DEFAULT_FIGURES = ("comparison", "anatomy")  # sources.png on request: its maps need a suitable model
_SOURCE_CELL_INCHES = (1.45, 1.6)


def grid_size_px(pairs: int) -> tuple[int, int]:
    """(width, height) in pixels of ``comparison.png`` for ``pairs`` rows."""
    return int(len(COLUMNS) * _CELL_INCHES[0] * DPI), int(pairs * _CELL_INCHES[1] * DPI)


def sources_size_px(rows: int) -> tuple[int, int]:
    """(width, height) in pixels of ``sources.png`` for ``rows`` images."""
    columns = 1 + 2 * len(SOURCE_COLUMNS)
    return round(columns * _SOURCE_CELL_INCHES[0] * DPI), round(rows * _SOURCE_CELL_INCHES[1] * DPI)


def all_translations(height: int, width: int) -> torch.Tensor:
    """Every candidate ``(dy, dx)`` with some overlap, ((2H-1)(2W-1), 2) long, in raster order.

    Row ``i * (2W-1) + j`` is ``(i - (H-1), j - (W-1))``: the set ``sample_translations(H, W, 1.0)``
    draws, ordered so the flattened score grid and the candidate list agree (ties resolve alike).
    """
    return torch.cartesian_prod(torch.arange(-(height - 1), height), torch.arange(-(width - 1), width))


# -- the figure data ---------------------------------------------------------------------------------
@dataclass
class ComparisonData:
    """Rows of the comparison grid: images (P, C, H, W) float32 in display range [0, 1], soft labels
    (P, num_classes) float32, and SAGE's chosen ``translation`` (P, 2) long."""

    images: dict[str, torch.Tensor]  # keyed by COLUMNS
    labels: dict[str, torch.Tensor]
    translation: torch.Tensor
    class_names: tuple[str, ...]


@dataclass
class AnatomyData:
    """One SAGE mix taken apart. Images (C, H, W) float32 in [0, 1], maps (H, W) float32; ``scores`` is
    the (2H-1, 2W-1) grid of ``v(tau)`` with entry ``[dy + H-1, dx + W-1]``; ``marked`` is its argmax as
    ``(dy, dx)``; ``chosen`` is the ``(dy, dx)`` that ``sage_mix`` applied with every translation a
    candidate; ``sage_label`` (num_classes,) float32."""

    image_a: torch.Tensor
    image_b: torch.Tensor
    saliency_a: torch.Tensor
    saliency_b: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor
    marked: tuple[int, int]
    chosen: tuple[int, int]
    prior: float
    lam: float
    sage: torch.Tensor
    mixup: torch.Tensor
    sage_label: torch.Tensor
    class_names: tuple[str, ...]
    label_a: int
    label_b: int


def pair_permutation(batch: int, pairs: int) -> torch.Tensor:
    """(batch,) long permutation swapping image ``i`` with ``i + pairs`` for ``i < pairs``."""
    perm = torch.arange(batch)
    perm[:pairs] = torch.arange(pairs, 2 * pairs)
    perm[pairs : 2 * pairs] = torch.arange(pairs)
    return perm


def _pair_draws(seed: int, pairs: int, upper_lambda: float) -> dict[str, np.ndarray]:
    """Per-pair random draws, identical for :func:`comparison_data` and :func:`anatomy_data`."""
    rng = np.random.default_rng(seed)
    return {
        "mixup": rng.beta(1.0, 1.0, pairs),
        "cutmix": rng.beta(1.0, 1.0, pairs),
        "box": rng.random((pairs, 2)),
        "prior": rng.beta(1.0, 1.0, pairs) * upper_lambda,
    }


def _check_pairs(batch: Batch, saliency: torch.Tensor, pairs: int) -> None:
    _checks.check_positive_int("pairs", pairs)
    size = batch.images.shape[0]
    if 2 * pairs > size:
        raise ValueError(f"pairs={pairs} needs a batch of at least {2 * pairs} images, got {size}")
    if saliency.shape != (size, *batch.images.shape[-2:]):
        raise ValueError(
            f"saliency must have shape (B, H, W) = {(size, *batch.images.shape[-2:])}, "
            f"got {tuple(saliency.shape)}"
        )


def comparison_data(
    batch: Batch,
    saliency: torch.Tensor,
    pairs: int,
    *,
    seed: int = 0,
    upper_lambda: float = _D.upper_lambda,
    rand_pos: float = _D.rand_pos,
) -> ComparisonData:
    """Mixup, CutMix and SAGE of images ``i`` and ``i + pairs`` of ``batch``, for ``i < pairs``.

    ``saliency`` (B, H, W) float32. Draws from ``seed``, one per pair: Mixup ``lam ~ Beta(1, 1)``; a CutMix
    box of area ``1 - lam`` (``lam ~ Beta(1, 1)``, corrected to the clipped area); a SAGE prior
    ``Beta(1, 1) * upper_lambda``; SAGE candidates ``sample_translations(H, W, rand_pos)`` shared by the
    batch, as in training.
    """
    _check_pairs(batch, saliency, pairs)
    x, y = batch.images, batch.labels
    size, _, height, width = x.shape
    draws = _pair_draws(seed, pairs, upper_lambda)
    perm = pair_permutation(size, pairs)
    a, b = x[:pairs], x[pairs : 2 * pairs]

    def target(lam_pairs) -> torch.Tensor:
        lam = torch.ones(size)
        lam[:pairs] = torch.as_tensor(lam_pairs, dtype=torch.float32)
        return functional.sage_target(y, perm=perm, lam=lam, num_classes=len(batch.class_names))[:pairs]

    mix_lam = torch.from_numpy(draws["mixup"]).float().view(-1, 1, 1, 1)
    cutmix, cut_lam = a.clone(), torch.ones(pairs)
    for i in range(pairs):
        ratio = float(np.sqrt(1.0 - draws["cutmix"][i]))
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        top, left = (draws["box"][i] * (height - cut_h + 1, width - cut_w + 1)).astype(int)
        cutmix[i, :, top : top + cut_h, left : left + cut_w] = b[i, :, top : top + cut_h, left : left + cut_w]
        cut_lam[i] = 1.0 - cut_h * cut_w / (height * width)
    prior = torch.full((size,), 0.5)
    prior[:pairs] = torch.from_numpy(draws["prior"]).float()
    generator = torch.Generator().manual_seed(seed)
    candidates = functional.sample_translations(height, width, rand_pos, generator=generator)
    out = functional.sage_mix(x, saliency, perm=perm, prior=prior, translations=candidates)
    mixup = mix_lam * a + (1 - mix_lam) * b
    images = {"A": a, "B": b, "Mixup": mixup, "CutMix": cutmix, "SAGE": out.images[:pairs]}
    lams = {"A": 1.0, "B": 0.0, "Mixup": mix_lam.flatten(), "CutMix": cut_lam, "SAGE": out.lam[:pairs]}
    return ComparisonData(
        images={key: batch.to_display(value) for key, value in images.items()},
        labels={key: target(value) for key, value in lams.items()},
        translation=out.translation[:pairs],
        class_names=batch.class_names,
    )


def anatomy_data(
    batch: Batch,
    saliency: torch.Tensor,
    *,
    pairs: int = 1,
    seed: int = 0,
    upper_lambda: float = _D.upper_lambda,
) -> AnatomyData:
    """The first pair of ``batch`` (images 0 and ``pairs``) mixed by SAGE with every translation a candidate.

    Its prior is the first pair's SAGE prior in :func:`comparison_data` with the same ``seed``; ``scores``
    come from :func:`~timm_sage.functional.translation_scores` over :func:`all_translations`.
    """
    _check_pairs(batch, saliency, pairs)
    x = batch.images
    size, _, height, width = x.shape
    prior_value = float(_pair_draws(seed, pairs, upper_lambda)["prior"][0])
    perm = pair_permutation(size, pairs)
    prior = torch.full((size,), 0.5)
    prior[0] = prior_value
    candidates = all_translations(height, width)
    out = functional.sage_mix(x, saliency, perm=perm, prior=prior, translations=candidates)
    scores = functional.translation_scores(saliency, perm=perm, prior=prior, translations=candidates)[0]
    flat = int(torch.argmax(scores))
    span = 2 * width - 1
    marked = (flat // span - (height - 1), flat % span - (width - 1))
    mask = functional.mixing_mask(saliency, perm=perm, prior=prior, translation=out.translation)[0]
    lam = float(out.lam[0])
    soft = functional.sage_target(batch.labels, perm=perm, lam=out.lam, num_classes=len(batch.class_names))
    return AnatomyData(
        image_a=batch.to_display(x[:1])[0],
        image_b=batch.to_display(x[pairs : pairs + 1])[0],
        saliency_a=saliency[0].float(),
        saliency_b=saliency[pairs].float(),
        mask=mask,
        scores=scores.view(2 * height - 1, span),
        marked=marked,
        chosen=(int(out.translation[0, 0]), int(out.translation[0, 1])),
        prior=prior_value,
        lam=lam,
        sage=batch.to_display(out.images[:1])[0],
        mixup=batch.to_display((lam * x[0] + (1.0 - lam) * x[pairs])[None])[0],
        sage_label=soft[0],
        class_names=batch.class_names,
        label_a=int(batch.labels[0]),
        label_b=int(batch.labels[pairs]),
    )


@dataclass
class SourcesData:
    """Images (R, C, H, W) float32 in [0, 1], their class names, and ``maps[(model, source)]`` (R, H, W)
    float32 for ``model`` in ("live", "ema") and ``source`` in :data:`SOURCE_COLUMNS`. A source the model
    cannot give (a 1x1 last feature map, a head a CAM cannot read) has no map: ``missing[(model, source)]``
    says why, and the figure shows that reason in its panels."""

    images: torch.Tensor
    labels: tuple[str, ...]
    maps: dict[tuple[str, str], torch.Tensor]
    missing: dict[tuple[str, str], str] = field(default_factory=dict)


def sources_data(batch: Batch, live: nn.Module, ema: nn.Module, rows: int, config: SageConfig) -> SourcesData:
    """The maps of every saliency source for the first ``rows`` images of ``batch`` (computed on the whole
    batch, as in training), from ``live`` (in its mode: train, as SAGE runs it) and from ``ema`` (the
    EMA copy, in its own mode: eval, as timm keeps it). ``config``: the blur and the saliency loss."""
    _checks.check_positive_int("rows", rows)
    x, y = batch.images, batch.labels
    maps: dict[tuple[str, str], torch.Tensor] = {}
    missing: dict[tuple[str, str], str] = {}
    for name, model in (("live", live), ("ema", ema)):
        for source in SOURCE_COLUMNS:
            if source == "gradient":
                found = functional.saliency_map(
                    model, x, y, loss=config.saliency_loss, reduce=config.saliency_reduce,
                    blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma,
                )  # fmt: skip
            else:
                try:
                    found = feature_saliency(
                        read_head(model, source), x, y, source=source, loss=config.saliency_loss,
                        blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma,
                    ).saliency  # fmt: skip
                except ValueError as error:  # the model cannot give this source: said in the figure
                    missing[(name, source)] = str(error)
                    continue
            maps[(name, source)] = found[:rows].float()
    labels = tuple(batch.class_names[int(label)] for label in y[:rows])
    return SourcesData(batch.to_display(x[:rows]), labels, maps, missing)


# -- plotting (matplotlib only here) -----------------------------------------------------------------
def _label_text(soft: torch.Tensor, names: tuple[str, ...]) -> str:
    order = torch.argsort(soft, descending=True)[:2]
    return "\n".join(f"{float(soft[i]):.2f} {names[int(i)][:14]}" for i in order if float(soft[i]) >= 0.005)


def _imshow(ax, image: torch.Tensor) -> None:
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (:func:`timm_sage._atomic.atomic_path`)."""
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=DPI, format="png")
    return path


def plot_comparison(data: ComparisonData, path: str | Path) -> Path:
    """Draw the comparison grid (``grid_size_px(P)`` pixels) to ``path``; returns the path."""
    from matplotlib.figure import Figure

    pairs = data.images["A"].shape[0]
    size = (len(COLUMNS) * _CELL_INCHES[0], pairs * _CELL_INCHES[1])
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(pairs, len(COLUMNS), squeeze=False)
    for row in range(pairs):
        for col, key in enumerate(COLUMNS):
            ax = axes[row, col]
            _imshow(ax, data.images[key][row])
            ax.set_title(f"{key}\n{_label_text(data.labels[key][row], data.class_names)}", fontsize=8)
    return _save(fig, Path(path))


def plot_anatomy(data: AnatomyData, path: str | Path) -> Path:
    """Draw the anatomy of one SAGE mix (``ANATOMY_SIZE_PX`` pixels) to ``path``; returns the path."""
    from matplotlib.figure import Figure

    names = data.class_names
    fig = Figure(figsize=_ANATOMY_INCHES, dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 4)
    _imshow(axes[0, 0], data.image_a)
    axes[0, 0].set_title(f"A: {names[data.label_a]}", fontsize=9)
    _imshow(axes[0, 1], data.image_b)
    axes[0, 1].set_title(f"B: {names[data.label_b]}", fontsize=9)
    for ax, saliency, tag in ((axes[0, 2], data.saliency_a, "A"), (axes[0, 3], data.saliency_b, "B")):
        ax.imshow(saliency.numpy(), cmap="inferno", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"saliency of {tag}", fontsize=9)
    image = axes[1, 0].imshow(data.mask.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[1, 0].set_xticks([])
    axes[1, 0].set_yticks([])
    axes[1, 0].set_title(f"mask M (prior {data.prior:.2f})", fontsize=9)
    fig.colorbar(image, ax=axes[1, 0], location="bottom", shrink=0.8, aspect=30)
    rows, cols = data.scores.shape
    half_h, half_w = (rows - 1) // 2, (cols - 1) // 2
    extent = (-half_w - 0.5, half_w + 0.5, half_h + 0.5, -half_h - 0.5)
    ax = axes[1, 1]
    image = ax.imshow(data.scores.numpy(), cmap="magma", extent=extent, interpolation="nearest")
    fig.colorbar(image, ax=ax, location="bottom", shrink=0.8, aspect=30, format="%.2f")
    ax.plot([0], [0], marker="+", color="white", markersize=7)
    ax.plot(
        [data.marked[1]],
        [data.marked[0]],
        marker="o",
        markersize=9,
        markerfacecolor="none",
        markeredgecolor="cyan",
        markeredgewidth=2,
    )
    ax.set_title(f"v(tau), best (dy, dx) = {data.marked}", fontsize=9)
    ax.set_xlabel("dx", fontsize=8)
    ax.set_ylabel("dy", fontsize=8)
    ax.tick_params(labelsize=7)
    _imshow(axes[1, 2], data.sage)
    axes[1, 2].set_title(f"SAGE\n{_label_text(data.sage_label, names)}", fontsize=8)
    _imshow(axes[1, 3], data.mixup)
    axes[1, 3].set_title(f"Mixup, same lam\n{_label_text(data.sage_label, names)}", fontsize=8)
    return _save(fig, Path(path))


def plot_sources(data: SourcesData, path: str | Path) -> Path:
    """Draw each image and its six maps (live and EMA; gradient, cam, features) to ``path``."""
    from matplotlib.figure import Figure

    rows = data.images.shape[0]
    keys = [(model, source) for model in ("live", "ema") for source in SOURCE_COLUMNS]
    size = ((1 + len(keys)) * _SOURCE_CELL_INCHES[0], rows * _SOURCE_CELL_INCHES[1])
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1 + len(keys), squeeze=False)
    for row in range(rows):
        _imshow(axes[row, 0], data.images[row])
        axes[row, 0].set_title(data.labels[row][:14], fontsize=8)
        for col, key in enumerate(keys, start=1):
            ax = axes[row, col]
            if key in data.maps:
                ax.imshow(data.maps[key][row].numpy(), cmap="inferno", interpolation="nearest")
            else:
                reason = "1x1 feature map" if "1x1" in data.missing[key] else "head not readable"
                ax.text(
                    0.5,
                    0.5,
                    f"no map:\n{reason}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    transform=ax.transAxes,
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{key[1]}\n{key[0]}", fontsize=8)
    return _save(fig, Path(path))


# -- the command -------------------------------------------------------------------------------------
def show(
    outdir: str | Path,
    *,
    data: str | Path | None = None,
    checkpoint: str | Path | None = None,
    model: str | None = None,
    pairs: int = 4,
    seed: int = 0,
    upper_lambda: float = _D.upper_lambda,
    rand_pos: float = _D.rand_pos,
    warmup_steps: int | None = None,
    image_size: int | None = None,
    ema_decay: float = 0.95,
    figures: tuple[str, ...] = DEFAULT_FIGURES,
) -> dict[str, Path]:
    """Write ``comparison.png`` and ``anatomy.png`` (and, asked for, ``sources.png``) to ``outdir``.

    Saliency comes from ``checkpoint`` (see :func:`build_model`) or from a fresh model trained for
    ``warmup_steps`` steps (default 50 without a checkpoint, 0 with one) on 1024 training images; an EMA
    copy of it (timm's ``ModelEmaV3``, ``ema_decay``) is updated after each of those steps and gives the
    EMA maps of ``sources.png`` (with no warm-up steps it equals the model, in eval mode).
    ``figures``: which of :data:`FIGURES` to write (default :data:`DEFAULT_FIGURES`).
    Returns ``{name: path}`` of the figures written; a record beside them (``show.json`` for the default
    figures, ``show-<figures>.json`` for another choice) holds the command, its arguments and the digests
    of its inputs and code (:mod:`timm_sage.tools.provenance`).
    """
    _checks.check_positive_int("pairs", pairs)
    if pairs > 16:
        raise ValueError(f"pairs must be <= 16, got {pairs}")
    _checks.check_positive_int("seed", seed, minimum=0)
    SageConfig(upper_lambda=upper_lambda, rand_pos=rand_pos)  # the options' rules
    warmup_steps = (0 if checkpoint is not None else 50) if warmup_steps is None else warmup_steps
    _checks.check_positive_int("warmup_steps", warmup_steps, minimum=0)
    _checks.check_fraction("ema_decay", ema_decay)
    if not figures or any(name not in FIGURES for name in figures):
        raise ValueError(f"figures must be some of {', '.join(FIGURES)}, got {figures!r}")
    if image_size is not None:
        _checks.check_positive_int("image_size", image_size, minimum=8)
    batch = load_display_batch(data, pairs, max(BATCH_SIZE, 2 * pairs), seed, image_size)
    # These tensors are tiny: one thread is as fast as several on an idle machine, is not slowed tenfold
    # by spinning OpenMP threads on a busy one, and gives the same figures on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = build_model(model, batch.images.shape[1], len(batch.class_names), checkpoint, seed)
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(net, decay=ema_decay)
        if warmup_steps:
            train = load_images(data, "train", 1024, seed + 1, image_size)
            warm_up(net, train, warmup_steps, seed, ema=ema)
        net.train()  # SAGE's saliency pass runs in train mode (docs/algorithm.md section 1)
        saliency = functional.saliency_map(net, batch.images, batch.labels)
        comparison = comparison_data(
            batch, saliency, pairs, seed=seed, upper_lambda=upper_lambda, rand_pos=rand_pos
        )
        anatomy = anatomy_data(batch, saliency, pairs=pairs, seed=seed, upper_lambda=upper_lambda)
        rows = min(2 * pairs, 8)
        sources = sources_data(batch, net, ema.module, rows, SageConfig()) if "sources" in figures else None
    finally:
        torch.set_num_threads(threads)
    outdir = Path(outdir)
    plots = {
        "comparison": lambda: plot_comparison(comparison, outdir / "comparison.png"),
        "anatomy": lambda: plot_anatomy(anatomy, outdir / "anatomy.png"),
        "sources": lambda: plot_sources(sources, outdir / "sources.png"),
    }
    paths = {name: plots[name]() for name in FIGURES if name in figures}
    arguments = dict(
        data=None if data is None else str(data), checkpoint=None if checkpoint is None else str(checkpoint),
        model=model, pairs=pairs, seed=seed, upper_lambda=upper_lambda, rand_pos=rand_pos,
        warmup_steps=warmup_steps, image_size=image_size, ema_decay=ema_decay, figures=list(figures),
    )  # fmt: skip
    inputs = [Path(checkpoint)] if checkpoint is not None else []
    provenance.write_record(
        outdir / record_name(figures), command=show_command(outdir, arguments), entry=__name__,
        arguments=arguments, inputs=inputs + _data_files(data), figures=paths.values(),
    )  # fmt: skip
    return paths


def show_command(outdir: str | Path, arguments: dict[str, Any]) -> str:
    """The ``timm-sage show`` command line that draws with ``arguments`` (the non-default ones given)."""
    defaults = dict(
        pairs=4, seed=0, upper_lambda=_D.upper_lambda, rand_pos=_D.rand_pos, ema_decay=0.95,
        figures=list(DEFAULT_FIGURES),
    )  # fmt: skip
    words = ["timm-sage", "show", "-o", str(outdir)]
    for name, value in arguments.items():
        if value is None or defaults.get(name, object()) == value or (name == "warmup_steps" and value == 50):
            continue
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        words += ["--" + name.replace("_", "-"), shown]
    return " ".join(words)


def record_name(figures: tuple[str, ...] | list[str]) -> str:
    """The provenance record beside the figures: ``show.json`` for :data:`DEFAULT_FIGURES`, else
    ``show-<figure>-<figure>.json``, so that drawing other figures into the same folder leaves it."""
    if set(figures) == set(DEFAULT_FIGURES):
        return RECORD
    return "show-" + "-".join(name for name in FIGURES if name in figures) + ".json"


def _data_files(data: str | Path | None) -> list[Path]:
    """The files the figures read: Fashion-MNIST's idx pairs, else the data folder's top-level files."""
    root = Path(data) if data is not None else _idx.FASHION_MNIST_ROOT
    pairs = [_idx.find_idx_pair(root, split) for split in ("train", "test")]
    if all(pairs):
        return [path for pair in pairs for path in pair]
    return sorted(path for path in root.iterdir() if path.is_file()) if root.is_dir() else []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``timm-sage show`` options."""
    parser.add_argument("-o", "--output", default="output/show", metavar="OUTDIR", help="output folder")
    parser.add_argument(
        "--data",
        default=None,
        help="Fashion-MNIST idx folder (default: the system copy), CIFAR python folder or ImageFolder",
    )
    parser.add_argument("--checkpoint", default=None, help="model checkpoint or state dict for the saliency")
    parser.add_argument(
        "--model", default=None, help=f"timm model name (default: the checkpoint's, else {DEFAULT_MODEL})"
    )
    parser.add_argument("--pairs", type=int, default=4, help="rows of the comparison grid")
    parser.add_argument("--seed", type=int, default=0)
    add_option_arguments(parser, ("upper_lambda", "rand_pos"))
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="SGD steps on a fresh model before saliency (default 50; 0 with --checkpoint)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side of ImageFolder images after resize and centre crop (default 64)",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.95,
        help="decay of the EMA copy whose maps sources.png shows (updated after each warm-up step)",
    )
    parser.add_argument(
        "--figures",
        nargs="+",
        choices=FIGURES,
        default=list(DEFAULT_FIGURES),
        help="which figures to write (default: comparison anatomy; sources: each saliency source's maps, "
        "live and EMA, for a model whose last feature map is larger than 1x1 at the images' size)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``timm-sage show``; prints the two PNG paths."""
    paths = show(
        args.output,
        data=args.data,
        checkpoint=args.checkpoint,
        model=args.model,
        pairs=args.pairs,
        seed=args.seed,
        upper_lambda=args.upper_lambda,
        rand_pos=args.rand_pos,
        warmup_steps=args.warmup_steps,
        image_size=args.image_size,
        ema_decay=args.ema_decay,
        figures=tuple(args.figures),
    )
    for path in paths.values():
        print(path)
    return 0
