"""The inputs of ``timm-sage show``: small image batches and the model that gives their saliency.

Images come from Fashion-MNIST idx files, a CIFAR python folder or an ImageFolder; only a few hundred
are ever read (this is no training pipeline: that is ``timm_sage.train``). The model is a timm model,
loaded from a checkpoint or warmed up for a few steps. Every draw comes from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timm_sage.data import idx as _idx
from timm_sage.data.cifar import read_cifar
from timm_sage.data.stats import DATASET_STATS
from timm_sage.models import checkpoint as _checkpoint

DEFAULT_MODEL = "resnet10t"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


@dataclass
class Batch:
    """Normalised images (N, C, H, W) float32, labels (N,) int64, class names, per-channel mean/std (C,)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: torch.Tensor
    std: torch.Tensor

    def to_display(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of (N, C, H, W) images: float32 in [0, 1]."""
        view = (1, -1, 1, 1)
        return (images.float() * self.std.view(view) + self.mean.view(view)).clamp(0.0, 1.0)


def _batch(images: np.ndarray, labels: np.ndarray, names: Sequence[str], mean, std) -> Batch:
    """From uint8 (N, C, H, W) images."""
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = (x - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)
    return Batch(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)), tuple(names), mean_t, std_t)


def _choose(total: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(total)[: min(count, total)]


def _read_cifar(root: Path, split: str, count: int, seed: int) -> Batch:
    name = "cifar100" if (root / "meta").is_file() else "cifar10"
    images, labels, names = read_cifar(name, root, train=split == "train")
    index = _choose(len(labels), count, seed)
    return _batch(images.numpy()[index], labels.numpy()[index], names, *DATASET_STATS[name])


def _read_image_folder(root: Path, split: str, count: int, seed: int, image_size: int) -> Batch:
    from PIL import Image, ImageOps

    for sub in {"train": ("train",), "test": ("val", "validation", "test")}[split]:
        if (root / sub).is_dir() and (root / "train").is_dir():
            root = root / sub
            break
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    samples = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not samples:
        raise ValueError(f"data {root} holds no class folders with images (ImageFolder: root/CLASS/*.png)")
    index = _choose(len(samples), count, seed)
    images = []
    for i in index:
        with Image.open(samples[i][0]) as image:
            fitted = ImageOps.fit(image.convert("RGB"), (image_size, image_size))
            images.append(np.asarray(fitted).transpose(2, 0, 1))
    labels = np.array([samples[i][1] for i in index])
    return _batch(np.stack(images), labels, classes, *DATASET_STATS["imagenet"])


def load_images(
    data: str | Path | None, split: str, count: int, seed: int, image_size: int | None = None
) -> Batch:
    """``count`` images drawn with ``seed`` from one split (``"train"`` or ``"test"``) of ``data``.

    ``data``: a Fashion-MNIST idx folder (default: the system copy), a CIFAR-10/100 python folder
    (``data_batch_1``/``test_batch`` or ``train``/``test`` pickles) or an ImageFolder (``root/CLASS/*.png``,
    optionally with ``train/`` and ``val/``), the last resized and centre-cropped to ``image_size``
    (default 64). Fashion-MNIST and CIFAR keep their native size.
    """
    root = Path(data) if data is not None else _idx.FASHION_MNIST_ROOT
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if _idx.find_idx_pair(root, split) is not None:
        images, labels = _idx.load_idx_split(root, split, limit=10000)
        index = _choose(len(labels), count, seed)
        stats = DATASET_STATS["fashion_mnist"]
        return _batch(images[index][:, None], labels[index], _idx.FASHION_MNIST_CLASSES, *stats)
    if (root / "batches.meta").is_file() or (root / "meta").is_file():
        return _read_cifar(root, split, count, seed)
    return _read_image_folder(root, split, count, seed, image_size or 64)


def load_display_batch(
    data: str | Path | None, pairs: int, batch_size: int, seed: int, image_size: int | None = None
) -> Batch:
    """A test-split batch of ``batch_size`` images whose image ``i`` and ``i + pairs`` (``i < pairs``)
    have different classes where the data allows it; the rest fill the batch (BatchNorm statistics)."""
    pool = load_images(data, "test", batch_size + 4 * pairs, seed, image_size)
    labels = pool.labels.tolist()
    free = list(range(len(labels)))
    anchors = free[:pairs]
    free = free[pairs:]
    partners = []
    for anchor in anchors:
        pick = next((j for j in free if labels[j] != labels[anchor]), free[0] if free else None)
        if pick is None:
            raise ValueError(f"data holds too few images for pairs={pairs}")
        partners.append(pick)
        free.remove(pick)
    order = torch.tensor(anchors + partners + free[: max(0, batch_size - 2 * pairs)])
    return Batch(pool.images[order], pool.labels[order], pool.class_names, pool.mean, pool.std)


# -- the model ---------------------------------------------------------------------------------------
def build_model(
    name: str | None, in_chans: int, num_classes: int, checkpoint: str | Path | None = None, seed: int = 0
) -> nn.Module:
    """:func:`timm_sage.models.checkpoint.build_model` with the figures' default model."""
    return _checkpoint.build_model(name, in_chans, num_classes, checkpoint, seed, default=DEFAULT_MODEL)


def warm_up(model: nn.Module, batch: Batch, steps: int, seed: int, ema: nn.Module | None = None) -> None:
    """``steps`` SGD steps (batch 64, lr 0.05, momentum 0.9) on ``batch`` so the saliency means something;
    ``ema`` (timm's ``ModelEmaV3``), when given, is updated after each step, as a training loop does."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in tqdm(range(steps), desc="warm-up", disable=None, leave=False):
        size = batch.images.shape[0]
        index = torch.randint(0, size, (min(64, size),), generator=generator)
        loss = nn.functional.cross_entropy(model(batch.images[index]), batch.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
    optimizer.zero_grad(set_to_none=True)
