"""Datasets of ``timm-sage train``, decoded once into uint8 tensors, and a seeded batch loader.

Never downloads. Sources, by the ``dataset`` key:

* ``fashion_mnist`` (or ``torch/fashion_mnist``, ``mnist``): idx files (``*-idx3-ubyte[.gz]``) in
  ``data_dir``, default ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
* ``cifar10`` / ``cifar100`` (or ``torch/cifar10`` ...): the python-pickle folder
  (``cifar-10-batches-py`` / ``cifar-100-python``) in ``data_dir``, read by torchvision without download.
* ``fashion_mnist_scenes``: Fashion-MNIST garments on natural photographs (:mod:`timm_sage.data.scenes`),
  generated from the ``scenes_*`` keys and cached; it brings its own validation split and object masks.
* ``""`` / ``folder``: an ImageFolder tree ``data_dir/{train_split,val_split}/CLASS/*.png``; any other name
  goes to ``timm.data.create_dataset`` (``download=False``). Images are resized to ``input_size``.

The loader augments whole batches at once (pad-and-crop, horizontal flip, then mean/std normalisation),
every draw from a ``torch.Generator`` seeded by ``(seed, epoch)``, so an epoch replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from timm_sage.data import idx as _idx
from timm_sage.data.cifar import FOLDERS, read_cifar
from timm_sage.data.stats import DATASET_STATS

__all__ = [
    "BatchLoader",
    "DataSplits",
    "ImageTensors",
    "class_balanced_subset",
    "crop_padding",
    "load_datasets",
]

FASHION_MNIST_DIR = _idx.FASHION_MNIST_ROOT
FASHION_MNIST_CLASSES = _idx.FASHION_MNIST_CLASSES
# per-channel statistics of the training images (values in [0, 1])
SUBSET_SEED = 20221101  # fixed: every method and seed of a study sees the same training subset


@dataclass
class ImageTensors:
    """A decoded split: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64, class names, and where the
    dataset knows them the objects' ``masks`` (N, H, W) uint8 (alpha, 0-255) and the background photograph
    of each image, ``photos`` (N,) int64 indices into ``photo_names``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    masks: torch.Tensor | None = None
    photos: torch.Tensor | None = None
    photo_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, indices: torch.Tensor) -> ImageTensors:
        masks = self.masks[indices] if self.masks is not None else None
        photos = self.photos[indices] if self.photos is not None else None
        return ImageTensors(
            self.images[indices], self.labels[indices], self.classes, masks, photos, self.photo_names
        )


class DataSplits(NamedTuple):
    """What :func:`load_datasets` returns: ``train``, ``val`` (None without ``val_size``), ``test`` and
    ``info`` = {"name", "mean", "std", "input_size": [C, H, W], "extra_tests": {name: ImageTensors}}; the
    extra tests are second test sets reported beside the test set (``test_disjoint`` of the pooled scenes),
    an empty dict for other datasets."""

    train: ImageTensors
    val: ImageTensors | None
    test: ImageTensors
    info: dict


def _canonical(name: str) -> str:
    name = name.lower().strip()
    for prefix in ("torch/", "torchvision/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace("-", "_").replace("fashionmnist", "fashion_mnist")


# ------------------------------------------------------------------------------------------ sources
def _load_idx(name: str, data_dir: str | None) -> tuple[ImageTensors, ImageTensors]:
    if data_dir is None and name != "fashion_mnist":
        raise ValueError(f"data_dir is required for dataset {name!r} (the folder of its idx files)")
    root = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    looked = [root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw"]
    for folder in (root, root / "FashionMNIST", root / "MNIST"):  # find_idx_pair also looks in raw/
        if _idx.find_idx_pair(folder, "train") is None or _idx.find_idx_pair(folder, "test") is None:
            continue
        classes = list(FASHION_MNIST_CLASSES) if name == "fashion_mnist" else [str(i) for i in range(10)]
        splits = []
        for split in ("train", "test"):
            images, labels = _idx.load_idx_split(folder, split)
            splits.append(
                ImageTensors(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels), classes)
            )
        return splits[0], splits[1]
    where = ", ".join(str(p) for p in looked)
    how = (
        "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files land in "
        f"{FASHION_MNIST_DIR}) or put the four idx .gz files from "
        "https://github.com/zalandoresearch/fashion-mnist in a folder and pass --data-dir FOLDER"
        if name == "fashion_mnist"
        else "put the four MNIST idx files (train/t10k images/labels) there"
    )
    raise FileNotFoundError(
        f"{name}: no train-/t10k-images-idx3-ubyte[.gz] + labels found; looked in {where}; {how}"
    )


def _load_cifar(name: str, data_dir: str | None) -> tuple[ImageTensors, ImageTensors]:
    if not data_dir:
        raise ValueError(f"data_dir is required for {name}: the folder that holds {FOLDERS[name]}/")
    return tuple(ImageTensors(*read_cifar(name, data_dir, train=train)) for train in (True, False))


def _decode(dataset, channels: int, size: tuple[int, int] | None, workers: int, what: str) -> ImageTensors:
    """Decode a PIL-image dataset into uint8 tensors (resized to ``size`` = (H, W) when given)."""
    from tqdm import tqdm

    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for index in tqdm(range(len(dataset)), desc=f"decoding {what}", leave=False, mininterval=1.0):
        image, label = dataset[index]
        image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]))
        array = np.asarray(image, dtype=np.uint8)
        images.append(torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()))
        labels.append(int(label))
    if not images:
        raise ValueError(f"{what}: the dataset is empty")
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"{what}: images have different sizes {sorted(shapes)[:3]}; set input_size")
    classes = list(getattr(dataset, "classes", None) or _reader_classes(dataset) or [])
    tensor = torch.stack(images).permute(0, 3, 1, 2).contiguous()
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    if not classes:
        classes = [str(i) for i in range(int(label_tensor.max()) + 1)]
    return ImageTensors(tensor, label_tensor, classes)


def _reader_classes(dataset) -> list[str] | None:
    reader = getattr(dataset, "reader", None)
    mapping = getattr(reader, "class_to_idx", None)
    if mapping:
        return [name for name, _ in sorted(mapping.items(), key=lambda item: item[1])]
    return None


def _load_timm(cfg, channels: int, size: tuple[int, int] | None) -> tuple[ImageTensors, ImageTensors]:
    from timm.data import create_dataset

    if not cfg.data_dir:
        raise ValueError(f"data_dir is required for dataset {cfg.dataset!r}")
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset {cfg.dataset or 'ImageFolder'}: data_dir {root} does not exist; expected "
            f"{root}/{cfg.train_split}/CLASS/IMAGE and {root}/{cfg.val_split}/CLASS/IMAGE"
        )
    name = "" if _canonical(cfg.dataset) in ("", "folder", "imagefolder") else cfg.dataset
    splits = []
    for split, what in ((cfg.train_split, "train"), (cfg.val_split, "test")):
        try:
            dataset = create_dataset(
                name, root=str(root), split=split, is_training=False, download=False,
                class_map=cfg.class_map or "",
            )  # fmt: skip
        except (RuntimeError, FileNotFoundError, AssertionError) as error:
            raise FileNotFoundError(
                f"dataset {cfg.dataset or 'ImageFolder'}: cannot read split {split!r} under {root}: {error}"
            ) from None
        splits.append(_decode(dataset, channels, size, cfg.workers, what))
    return splits[0], splits[1]


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _match_channels(images: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114])[:have].view(1, -1, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"in_chans: {name} has {have} channels, cannot feed a {channels}-channel model")


def _load_scenes(cfg) -> dict[str, ImageTensors]:
    from timm_sage.data import scenes

    params = scenes.SceneParams(**{name: cfg[f"scenes_{name}"] for name in scenes.SceneParams.names()})
    splits = scenes.load_scenes(params, cfg.data_dir)
    classes = list(FASHION_MNIST_CLASSES)
    return {
        name: ImageTensors(
            split.images, split.labels, classes, split.masks, split.photos,
            scenes.photograph_names(params, name),
        )
        for name, split in splits.items()
    }


def load_datasets(cfg) -> DataSplits:
    """Train, validation and test splits of ``cfg.dataset`` as uint8 tensors, subset and resized as
    configured.

    The validation split (``val_size`` images, class-balanced) is held out from the training pool: images
    that are not in the training subset (``train_subset``); ``fashion_mnist_scenes`` brings its own,
    drawn from other garments on other photographs. Choices (presets, settings, epochs) are made on it;
    the test split is for the final tables.
    """
    name = _canonical(cfg.dataset)
    requested = cfg.input_size
    channels = requested[0] if requested else cfg.in_chans
    size = tuple(requested[1:]) if requested else (cfg.img_size, cfg.img_size) if cfg.img_size else None
    val = None
    extra: dict[str, ImageTensors] = {}
    if name in ("fashion_mnist", "mnist"):
        train, test = _load_idx(name, cfg.data_dir)
    elif name == "fashion_mnist_scenes":
        extra = _load_scenes(cfg)
        train, val, test = extra.pop("train"), extra.pop("val"), extra.pop("test")
    elif name in ("cifar10", "cifar100"):
        train, test = _load_cifar(name, cfg.data_dir)
    else:
        train, test = _load_timm(cfg, channels or 3, size)
    channels = channels or train.images.shape[1]
    size = size or tuple(train.images.shape[-2:])
    for split in (train, val, test, *extra.values()):
        if split is not None:
            split.images = _resize(
                _match_channels(split.images, channels, cfg.dataset or "the dataset"), size
            )
            if split.masks is not None and tuple(split.masks.shape[-2:]) != size:
                raise ValueError(
                    f"input_size {list(size)} differs from the dataset's {list(split.masks.shape[-2:])}"
                )
    pool = train
    if cfg.train_subset is not None:
        chosen = class_balanced_subset(train.labels, cfg.train_subset, SUBSET_SEED)
        train = train.select(chosen)
    else:
        chosen = torch.arange(len(train))
    if cfg.val_size is not None:
        if val is None:
            # Held out from the training pool: the images that are not in the training subset.
            rest = torch.ones(len(pool), dtype=torch.bool)
            rest[chosen] = False
            remaining = torch.nonzero(rest).flatten()
            if remaining.numel() == 0:
                raise ValueError("val_size: every training image is in the training subset; set train_subset")
            picked = class_balanced_subset(pool.labels[remaining], cfg.val_size, SUBSET_SEED + 1, "val_size")
            val = pool.select(remaining[picked])
        elif cfg.val_size < len(val):
            val = val.select(class_balanced_subset(val.labels, cfg.val_size, SUBSET_SEED + 1, "val_size"))
        elif cfg.val_size > len(val):
            raise ValueError(f"val_size={cfg.val_size} exceeds the dataset's {len(val)} validation images")
    else:
        val = None
    mean, std = cfg.mean, cfg.std
    if mean is None or std is None:
        if name in DATASET_STATS and channels == len(DATASET_STATS[name][0]):
            default_mean, default_std = DATASET_STATS[name]
        else:
            pixels = train.images.float().div_(255).transpose(0, 1).reshape(channels, -1)
            default_mean, default_std = pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-3).tolist()
        mean = mean if mean is not None else list(default_mean)
        std = std if std is not None else list(default_std)
    mean, std = _per_channel("mean", mean, channels), _per_channel("std", std, channels)
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    info = {
        "name": name or "folder", "mean": mean, "std": std, "input_size": [channels, *size],
        "extra_tests": extra,
    }  # fmt: skip
    return DataSplits(train, val, test, info)


def _per_channel(key: str, values: list[float], channels: int) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"{key} needs 1 or {channels} values, got {values}")
    return values


def class_balanced_subset(
    labels: torch.Tensor, size: int, seed: int, key: str = "train_subset"
) -> torch.Tensor:
    """Indices (size,) int64, sorted: ``size // C`` per class (the remainder to the first classes).

    The choice within each class is a seeded random draw; ValueError if a class has too few images.
    """
    classes = torch.unique(labels)
    if size > labels.numel():
        raise ValueError(f"{key}={size} exceeds the {labels.numel()} images it is drawn from")
    generator = torch.Generator().manual_seed(seed)
    base, extra = divmod(size, len(classes))
    chosen = []
    for index, cls in enumerate(classes.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        take = base + (1 if index < extra else 0)
        if take > members.numel():
            raise ValueError(f"{key}={size}: class {cls} has only {members.numel()} images")
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def crop_padding(height: int, width: int) -> int:
    """Padding of the random crop: 2 pixels at 28-32 px (the paper's CIFAR recipe), 1/16 of the side in
    general."""
    return max(1, int(round(min(height, width) / 16)))


class BatchLoader:
    """Batches of normalised float images from uint8 tensors, with seeded batch augmentation.

    Args:
        data: the split.
        batch_size: images per batch; ``drop_last`` drops a short last batch (training).
        mean, std: per-channel normalisation (values for [0, 1] images).
        train: shuffle and augment (random pad-crop, horizontal flip with ``hflip`` probability).
        seed: with the epoch number, seeds the shuffle and the augmentation of that epoch.
        augment: False disables pad-crop and flip (``no_aug``).

    Yields ``(x, y)``: x (B, C, H, W) float32 on ``device``, y (B,) int64.
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        mean: list[float],
        std: list[float],
        *,
        train: bool,
        seed: int = 0,
        hflip: float = 0.5,
        augment: bool = True,
        drop_last: bool | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.train = train
        self.seed = int(seed)
        self.hflip = float(hflip) if augment else 0.0
        self.pad = crop_padding(*data.images.shape[-2:]) if (augment and train) else 0
        self.drop_last = train if drop_last is None else drop_last
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255
        if self.drop_last and len(data) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the {len(data)} training images")

    def __len__(self) -> int:
        count = len(self.data) / self.batch_size
        return int(count) if self.drop_last else math.ceil(count)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * epoch + 17)

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, in order; the same for the same (seed, epoch)."""
        generator = self.epoch_generator(epoch)
        count = len(self.data)
        order = torch.randperm(count, generator=generator) if self.train else torch.arange(count)
        for index in range(len(self)):
            batch_index = order[index * self.batch_size : (index + 1) * self.batch_size]
            images = self.data.images[batch_index]
            labels = self.data.labels[batch_index]
            if self.train:
                images = self._augment(images, generator)
            x = (images.to(self.device, torch.float32) - self.mean) / self.std
            yield x, labels.to(self.device)

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        if self.pad > 0:
            pad = self.pad
            padded = F.pad(images, (pad, pad, pad, pad))
            offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
            rows = (offsets[:, :1] + torch.arange(height)).view(batch, 1, height, 1)
            cols = (offsets[:, 1:] + torch.arange(width)).view(batch, 1, 1, width)
            batch_ix = torch.arange(batch).view(batch, 1, 1, 1)
            chan_ix = torch.arange(images.shape[1]).view(1, -1, 1, 1)
            images = padded[batch_ix, chan_ix, rows, cols]
        if self.hflip > 0:
            flip = torch.rand(batch, generator=generator) < self.hflip
            images = torch.where(flip.view(batch, 1, 1, 1), images.flip(-1), images)
        return images
