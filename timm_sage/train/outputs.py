"""What ``timm-sage train`` leaves in its output folder, every file written atomically.

``args.yaml`` (all resolved keys, as timm's train.py dumps them), ``metrics.csv`` and ``metrics.jsonl``
(one row per epoch), ``summary.json``, ``last.pth.tar`` (everything needed to resume), ``mixed_batch.png``
(the first mixed batch with its soft labels) and ``curves.png`` (loss and accuracy per epoch).
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from timm_sage._atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "METRIC_FIELDS",
    "atomic_write_bytes",
    "atomic_write_text",
    "fresh_run_folder",
    "load_checkpoint",
    "save_checkpoint",
    "write_args",
    "write_curves",
    "write_metrics",
    "write_mixed_grid",
    "write_summary",
]

METRIC_FIELDS = (
    "epoch", "train_loss", "train_top1", "val_top1", "test_loss", "test_top1", "test_top5", "ema_test_top1",
    "lr",
    "epoch_time", "img_per_s", "skipped_sage_batches",
)  # fmt: skip


def fresh_run_folder(base: Path) -> Path:
    """``base`` created, or if it holds an earlier run, ``base-1``, ``base-2``, ...: the first that did not
    exist or was empty (timm's ``get_outdir(..., inc=True)`` habit), so a new run never overwrites one.

    The folder is created here (``mkdir`` fails on an existing one), so two runs started at once with the
    same name get different folders.
    """
    candidate, count = Path(base), 0
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate  # an empty folder (made by hand, or by a run that never started) is free
        count += 1
        candidate = Path(base).with_name(f"{Path(base).name}-{count}")


def write_args(folder: Path, cfg: Mapping[str, Any]) -> Path:
    """``args.yaml``: every resolved key, flat, as timm's train.py writes it (``yaml.safe_dump``)."""
    return atomic_write_text(folder / "args.yaml", yaml.safe_dump(dict(cfg), default_flow_style=False))


def write_metrics(folder: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.jsonl`` from all rows so far (a resumed run drops stale rows)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRIC_FIELDS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in METRIC_FIELDS})
    atomic_write_text(folder / "metrics.csv", buffer.getvalue())
    atomic_write_text(folder / "metrics.jsonl", "".join(json.dumps(dict(row)) + "\n" for row in rows))


def write_summary(folder: Path, summary: Mapping[str, Any]) -> Path:
    return atomic_write_text(folder / "summary.json", json.dumps(dict(summary), indent=2) + "\n")


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> Path:
    """``torch.save`` into memory, then an atomic write: a kill never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``timm-sage train`` checkpoint, read with ``weights_only=True`` (older checkpoints, which hold
    numpy RNG state, with numpy's array types allowed as well)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        from timm_sage.models.checkpoint import _numpy_safe_globals

        with torch.serialization.safe_globals(_numpy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"resume: {path} is not a timm-sage train checkpoint")
    return state


_warned: set[str] = set()


def _pyplot():
    try:
        from timm_sage.tools.plots import _pyplot as pyplot

        return pyplot()
    except ImportError as error:
        if "matplotlib" not in _warned:
            _warned.add("matplotlib")
            warnings.warn(f"no figures: {error}", RuntimeWarning, stacklevel=3)
        return None


def _save(figure, path: Path) -> None:
    from timm_sage.tools.plots import save_figure_atomic

    save_figure_atomic(figure, path)


def write_mixed_grid(
    path: Path,
    images: torch.Tensor,
    targets: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str],
    title: str,
    limit: int = 16,
) -> Path | None:
    """PNG grid of mixed images (B, C, H, W) normalised, with their top-2 soft labels (B, num_classes)."""
    plt = _pyplot()
    if plt is None:
        return None
    count = min(limit, images.shape[0])
    pixels = images[:count].detach().float().cpu()
    pixels = pixels * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    pixels = pixels.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    columns = min(4, count)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.5 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        image = pixels[index]
        gray = image.shape[-1] == 1
        axis.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None)
        values, labels = targets[index].detach().float().cpu().topk(min(2, targets.shape[1]))
        pairs = zip(values.tolist(), labels.tolist(), strict=True)
        parts = [f"{_short(classes, c)} {v:.2f}" for v, c in pairs if v >= 0.01]
        axis.set_title("\n".join(parts), fontsize=7)
    figure.suptitle(title, fontsize=9)
    _save(figure, path)
    plt.close(figure)
    return path


def _short(classes: Sequence[str], index: int) -> str:
    name = classes[index] if index < len(classes) else str(index)
    return name if len(name) <= 14 else name[:13] + "."


def write_curves(path: Path, rows: Sequence[Mapping[str, Any]], title: str) -> Path | None:
    """PNG of train/test loss and test top-1 per epoch."""
    plt = _pyplot()
    if plt is None or not rows:
        return None
    epochs = [row["epoch"] for row in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(9, 3.4))
    # With eval_interval > 1 only some epochs carry test metrics: plot those.
    tested = [row for row in rows if row["test_top1"] is not None]
    tested_epochs = [row["epoch"] for row in tested]
    loss_axis.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="train (mixed)")
    loss_axis.plot(tested_epochs, [row["test_loss"] for row in tested], marker="o", label="test")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    acc_axis.plot(tested_epochs, [row["test_top1"] for row in tested], marker="o", label="test top-1")
    validated = [row for row in rows if row.get("val_top1") is not None]
    if validated:
        acc_axis.plot(
            [row["epoch"] for row in validated], [row["val_top1"] for row in validated], marker=".",
            label="validation top-1",
        )  # fmt: skip
    if any(row.get("ema_test_top1") is not None for row in tested):
        acc_axis.plot(
            tested_epochs, [row.get("ema_test_top1") for row in tested], marker=".", label="EMA test top-1"
        )
    acc_axis.set_xlabel("epoch")
    acc_axis.set_ylabel("accuracy (%)")
    acc_axis.legend()
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    _save(figure, path)
    plt.close(figure)
    return path
