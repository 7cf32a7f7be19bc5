"""``timm-sage agreement``: does a mixed image's label match what a trained model sees in it?

For each mixing method, the test images are mixed in batches as in training, and a *judge* (a model
trained without mixing, in eval mode) classifies every mixed image. Among images that mix two different
classes, the table counts how often the judge recognises the class with the larger label share, the one
with the smaller share, or neither. A label that often credits the image the judge does not see is label
noise. SAGE's saliency comes from a second checkpoint (a SAGE-trained model, in train mode as in SAGE).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from timm_sage.config import SageConfig
from timm_sage.core.clean import CleanGradientLostWarning
from timm_sage.mixup import SageMixup
from timm_sage.tools.report import write_between_markers

__all__ = ["add_arguments", "label_agreement", "report_target", "run"]

SECTION = "agreement"
METHODS = ("sage", "mixup", "cutmix")


def _mixer(
    method: str, num_classes: int, saliency_model: torch.nn.Module | None, config: SageConfig, seed: int
):
    if method == "sage":
        return SageMixup(
            mode="sage", num_classes=num_classes, label_smoothing=0.0, model=saliency_model, seed=seed,
            config=config,
        )  # fmt: skip
    alpha = {"mixup": (1.0, 0.0), "cutmix": (0.0, 1.0)}[method]
    return SageMixup(
        mixup_alpha=alpha[0], cutmix_alpha=alpha[1], num_classes=num_classes, label_smoothing=0.0
    )


@torch.no_grad()
def _judge(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images).argmax(1)


def label_agreement(
    judge: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    method: str,
    *,
    num_classes: int,
    saliency_model: torch.nn.Module | None = None,
    config: SageConfig | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mix ``batches`` with ``method`` and score the labels against ``judge``'s predictions.

    Args:
        judge: classifier (eval mode is set here) whose prediction stands for "what the image shows".
        batches: ``[(x (B, C, H, W) float normalised, y (B,) long)]``.
        method: ``"sage"`` (needs ``saliency_model``), ``"mixup"`` or ``"cutmix"`` (timm's batch mode).

    Returns:
        ``{"pairs", "larger", "smaller", "neither", "mean_larger_share"}``: counted over mixed images
        whose two label shares (both above 0.05) name different classes; fractions of ``pairs``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "sage" and saliency_model is None:
        raise ValueError("method='sage' needs saliency_model (a SAGE-trained model)")
    np.random.seed(seed)  # timm's Mixup (mixup, cutmix) draws from numpy's global generator
    mixer = _mixer(method, num_classes, saliency_model, config or SageConfig(), seed)
    judge.eval()
    counts = {"pairs": 0, "larger": 0, "smaller": 0, "neither": 0}
    share_sum = 0.0
    for x, y in batches:
        with warnings.catch_warnings():
            # Only the mixed images count here: no training step uses the weight's clean gradient.
            warnings.simplefilter("ignore", CleanGradientLostWarning)
            mixed, target = mixer(x.clone(), y)
        predicted = _judge(judge, mixed)
        shares, classes = target.topk(2, dim=1)
        two = shares[:, 1] > 0.05
        counts["pairs"] += int(two.sum())
        counts["larger"] += int((two & (predicted == classes[:, 0])).sum())
        counts["smaller"] += int((two & (predicted == classes[:, 1])).sum())
        share_sum += float(shares[two, 0].sum())
    pairs = max(counts["pairs"], 1)
    counts["neither"] = counts["pairs"] - counts["larger"] - counts["smaller"]
    return {
        "pairs": counts["pairs"],
        "larger": counts["larger"] / pairs,
        "smaller": counts["smaller"] / pairs,
        "neither": counts["neither"] / pairs,
        "mean_larger_share": share_sum / pairs,
    }


def _saliency_share(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    regions: list[torch.Tensor],
    config: SageConfig | None,
) -> dict[str, float]:
    """The mean share of the pixels in ``regions`` (per batch (B, H, W) weights in [0, 1]) and of each
    saliency map's mass on them (the SAGE pass: train mode, ``config``'s loss, reduction and blur)."""
    from timm_sage import functional

    config = config or SageConfig()
    area, mass, count = 0.0, 0.0, 0
    was_training = model.training
    model.train()
    for (x, y), region in zip(batches, regions, strict=True):
        maps = functional.saliency_map(
            model, x, y, loss=config.saliency_loss, reduce=config.saliency_reduce,
            blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma,
        )  # fmt: skip
        share = (maps * region).sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-30)
        area += float(region.mean((1, 2)).sum())
        mass += float(share.sum())
        count += x.shape[0]
    model.train(was_training)
    return {"area": area / max(count, 1), "saliency": mass / max(count, 1)}


def background_share(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    mean: float,
    std: float,
    config: SageConfig | None = None,
    threshold: float = 0.05,
) -> dict[str, float]:
    """Where the saliency of ``model`` lies: the share of each map's mass on background pixels.

    Background: pixels whose raw value (``x * std + mean``, in [0, 1]) is below ``threshold`` in every
    channel (Fashion-MNIST's black surround). Returns ``{"area", "saliency"}``: the mean background
    share of the pixels and of the saliency mass (the SAGE pass: train mode, ``config``'s loss, reduction
    and blur). Saliency on the garment would give a mass share far below the area share.
    """
    backgrounds = [((x * std + mean) < threshold).all(1).float() for x, _ in batches]
    return _saliency_share(model, batches, backgrounds, config)


def object_share(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    masks: list[torch.Tensor],
    *,
    config: SageConfig | None = None,
) -> dict[str, float]:
    """Where the saliency of ``model`` lies on data with exact object masks (``fashion_mnist_scenes``).

    ``masks``: per batch, (B, H, W) float in [0, 1] (the object's alpha). Returns ``{"area",
    "saliency"}``: the mean share of the pixels that the object covers (alpha-weighted) and the mean share
    of each saliency map's mass that lies on the object. Saliency that finds the object gives a mass share
    well above the area share.
    """
    return _saliency_share(model, batches, masks, config)


def _survival(anchor_visible, partner_visible, lam, lost, keeps) -> dict[str, float]:
    """Counts of objects mostly removed (visible share below ``lost``) whose label keeps ``keeps`` or more."""
    anchor_bad = (anchor_visible < lost) & (lam >= keeps)
    partner_bad = (partner_visible < lost) & (1 - lam >= keeps)
    return {
        "images": int(lam.numel()),
        "anchor_lost": int(anchor_bad.sum()),
        "partner_lost": int(partner_bad.sum()),
        "anchor_visible": float(anchor_visible.sum()),
        "partner_visible": float(partner_visible.sum()),
    }


def object_survival(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    masks: list[torch.Tensor],
    method: str,
    *,
    saliency_model: torch.nn.Module | None = None,
    config: SageConfig | None = None,
    seed: int = 0,
    lost: float = 0.25,
    keeps: float = 0.25,
) -> dict[str, float]:
    """How often a mix removes most of an object while the label still credits it.

    For ``"cutmix"`` (timm's batch mode: one box per batch, the flipped batch as partner) and ``"sage"``
    (the plan of :func:`timm_sage.functional.plan` on the saliency of ``saliency_model``), the visible
    share of each object is the alpha-weighted share of its mask that survives in the mixed image: the
    anchor's under the anchor's per-pixel weight, the partner's (after SAGE's translation) under the
    rest. An object counts as lost when less than ``lost`` of it is visible while its label share is at
    least ``keeps``. Returns ``{"images", "anchor_lost", "partner_lost", "mean_anchor_visible",
    "mean_partner_visible"}`` (rates as fractions of the images).
    """
    from timm.data.mixup import cutmix_bbox_and_lam

    from timm_sage import functional
    from timm_sage.core import search

    if method not in ("cutmix", "sage"):
        raise ValueError(f"method must be 'cutmix' or 'sage', got {method!r}")
    if method == "sage" and saliency_model is None:
        raise ValueError("method='sage' needs saliency_model (a SAGE-trained model)")
    config = config or SageConfig()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    totals = {"images": 0, "anchor_lost": 0, "partner_lost": 0, "anchor_visible": 0.0, "partner_visible": 0.0}
    for (x, y), mask in zip(batches, masks, strict=True):
        batch, height, width = mask.shape
        mass = mask.sum((1, 2)).clamp_min(1e-6)
        if method == "cutmix":
            perm = torch.arange(batch - 1, -1, -1)
            np.random.seed(int(rng.integers(2**31)))  # timm's box draws from numpy's global generator
            (top, bottom, left, right), lam_value = cutmix_bbox_and_lam(
                (batch, 1, height, width), float(rng.beta(1.0, 1.0)), correct_lam=True
            )
            weight = torch.ones(batch, height, width)
            weight[:, top:bottom, left:right] = 0.0
            lam = torch.full((batch,), float(lam_value))
            partner = mask[perm]
        else:
            saliency_model.train()
            maps = functional.saliency_map(
                saliency_model, x, y, loss=config.saliency_loss, reduce=config.saliency_reduce,
                blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma,
            )  # fmt: skip
            params = functional.sample_sage_params(
                batch, height, width, alpha=1.0, upper_lambda=config.upper_lambda,
                rand_pos=config.rand_pos, generator=generator,
            )  # fmt: skip
            plan = functional.plan(
                maps, perm=params.perm, prior=params.prior, translations=params.translations
            )
            weight, lam, perm = plan.mask, plan.lam, params.perm
            partner = search.shift_images(mask[perm][:, None], plan.translation)[:, 0]
        anchor_visible = (weight * mask).sum((1, 2)) / mass
        partner_visible = ((1 - weight) * partner).sum((1, 2)) / mass[perm]
        for key, value in _survival(anchor_visible, partner_visible, lam, lost, keeps).items():
            totals[key] += value
    images = max(totals["images"], 1)
    return {
        "images": totals["images"],
        "anchor_lost": totals["anchor_lost"] / images,
        "partner_lost": totals["partner_lost"] / images,
        "mean_anchor_visible": totals["anchor_visible"] / images,
        "mean_partner_visible": totals["partner_visible"] / images,
    }


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| method | mixed pairs of two classes | judge sees the larger share | the smaller share | neither "
        "| mean larger share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, r in results.items():
        lines.append(
            f"| {method} | {r['pairs']} | {100 * r['larger']:.1f} % | {100 * r['smaller']:.1f} % "
            f"| {100 * r['neither']:.1f} % | {r['mean_larger_share']:.3f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--judge", required=True, type=Path, help="checkpoint of a model trained without mixing"
    )
    parser.add_argument("--saliency", required=True, type=Path, help="checkpoint of a SAGE-trained model")
    parser.add_argument(
        "--config", required=True, help="the runs' training config (data, model, SAGE options)"
    )
    parser.add_argument("--images", type=int, default=2000, help="test images to mix (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--report", type=Path, default=None, help="Markdown file whose agreement section gets the table"
    )
    parser.add_argument(
        "--section", default=SECTION, help="name of the generated section (default agreement)"
    )


def report_target(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The Markdown file and the section that ``args`` (with ``--report``) write."""
    return args.report, args.section


def run(args: argparse.Namespace) -> int:
    from timm_sage.models.checkpoint import build_model
    from timm_sage.train.config import load_config
    from timm_sage.train.data import BatchLoader, load_datasets

    cfg = load_config(args.config)
    _, val, test, info = load_datasets(cfg)
    # The validation split where there is one: the test set is kept for the final tables.
    data = val if val is not None else test
    loader = BatchLoader(data, 100, info["mean"], info["std"], train=False, device=torch.device("cpu"))
    batches, seen = [], 0
    for x, y in loader.batches():
        batches.append((x, y))
        seen += y.shape[0]
        if seen >= args.images:
            break
    masks = (
        [
            data.masks[i : i + y.shape[0]].float() / 255
            for i, (_, y) in zip(range(0, seen, 100), batches, strict=True)
        ]
        if data.masks is not None
        else None
    )
    num_classes = cfg.num_classes or len(test.classes)
    judge = build_model(None, info["input_size"][0], num_classes, args.judge)
    saliency_model = build_model(None, info["input_size"][0], num_classes, args.saliency).train()
    config = SageConfig.from_mapping({k: v for k, v in cfg.items() if k != "sage_seed"}, prefix="sage_")
    results = {
        method: label_agreement(
            judge,
            batches,
            method,
            num_classes=num_classes,
            saliency_model=saliency_model,
            config=config,
            seed=args.seed,
        )  # fmt: skip
        for method in METHODS
    }
    body = f"Images: {seen} of the {'validation' if val is not None else 'test'} split.\n\n" + table(results)
    models = {"judge (trained without mixing)": judge, "SAGE-trained model": saliency_model}
    if masks is None:
        mean, std = float(info["mean"][0]), float(info["std"][0])
        shares = {
            name: background_share(model, batches, mean=mean, std=std, config=config)
            for name, model in models.items()
        }
        body += "\n\nWhere the saliency lies (share on background pixels: raw value below 0.05):\n\n"
        body += "| saliency of | background share of the pixels | background share of the saliency mass |\n"
        body += "|---|---:|---:|\n"
    else:
        shares = {name: object_share(model, batches, masks, config=config) for name, model in models.items()}
        body += "\n\nWhere the saliency lies (the objects' exact masks, alpha-weighted):\n\n"
        body += "| saliency of | object share of the pixels | object share of the saliency mass |\n"
        body += "|---|---:|---:|\n"
    body += "\n".join(
        f"| {name} | {100 * r['area']:.1f} % | {100 * r['saliency']:.1f} % |" for name, r in shares.items()
    )
    if masks is not None:
        survival = {
            method: object_survival(
                batches, masks, method, saliency_model=saliency_model, config=config, seed=args.seed
            )
            for method in ("cutmix", "sage")
        }
        body += (
            "\n\nObjects mostly removed while the label still credits them (under 25 % of the object "
            "visible, label share at least 25 %), as a share of the mixed images:\n\n"
            "| method | anchor object lost | partner object lost | mean visible share: anchor "
            "| partner |\n|---|---:|---:|---:|---:|\n"
        )
        body += "\n".join(
            f"| {method} | {100 * r['anchor_lost']:.1f} % | {100 * r['partner_lost']:.1f} % "
            f"| {r['mean_anchor_visible']:.3f} | {r['mean_partner_visible']:.3f} |"
            for method, r in survival.items()
        )
    print(body)
    if args.report is not None:
        command = (
            f"timm-sage agreement --judge {args.judge} --saliency {args.saliency} --config {args.config} "
            f"--images {args.images} --seed {args.seed} --report {args.report}"
            + (f" --section {args.section}" if args.section != SECTION else "")
        )
        write_between_markers(args.report, f"Command: `{command}`\n\n{body}", args.section)
    return 0
