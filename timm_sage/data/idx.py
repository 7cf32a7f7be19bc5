"""Private reader of idx files (MNIST / Fashion-MNIST layout): the one reader behind training data, the
saliency cache and the figures.

An idx file is ``0x00 0x00 TYPE NDIM``, NDIM big-endian uint32 sizes, then the raw array; the files may
be gzip-compressed. Only unsigned bytes (TYPE 0x08), the MNIST family's type, are supported.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from timm_sage.data.stats import DATASET_STATS

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
# Per-pixel mean/std of Fashion-MNIST's training images (values in [0, 1]).
(FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,) = DATASET_STATS["fashion_mnist"]
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The array stored in an idx(.gz) file, uint8 of the file's shape (only the first ``limit`` items)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        zero, dtype_code, ndim = struct.unpack(">HBB", handle.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(
                f"{path} is not an unsigned-byte idx file (magic {zero:#x}, type {dtype_code:#x})"
            )
        shape = list(struct.unpack(f">{ndim}I", handle.read(4 * ndim)))
        if limit is not None:
            shape[0] = min(shape[0], limit)
        count = int(np.prod(shape))
        data = np.frombuffer(handle.read(count), dtype=np.uint8)
    if data.size != count:
        raise ValueError(f"{path} is truncated: expected {count} values, found {data.size}")
    return data.reshape(shape)


def find_idx_pair(root: str | Path, split: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` idx files of ``split`` ("train" or "test") in ``root`` (or its ``raw/``
    folder, torchvision's layout), or None if absent."""
    prefix = _SPLIT_PREFIX.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test' for idx data, got {split!r}")
    for folder in (Path(root), Path(root) / "raw"):
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def load_idx_split(root: str | Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 of an idx dataset split (first ``limit`` items)."""
    pair = find_idx_pair(root, split)
    if pair is None:
        raise FileNotFoundError(
            f"no {split} idx files (*-images-idx3-ubyte[.gz], *-labels-idx1-ubyte[.gz]) in {root}"
        )
    images, labels = read_idx(pair[0], limit), read_idx(pair[1], limit).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"idx files in {root} hold images {images.shape} and labels {labels.shape}")
    return images, labels


class IdxDataset:
    """Map-style dataset over idx arrays: ``ds[i] -> (image (C, H, W) float32 normalised, label int)``.

    Args:
        images: (N, H, W) uint8; labels: (N,) int.
        mean, std: per-channel normalisation of values in [0, 1] (one value or ``in_chans`` values).
        in_chans: channels the model expects (grayscale repeated).
        image_size: bilinear resize to ``image_size x image_size`` (None keeps the stored size).
    """

    def __init__(
        self,
        images,
        labels,
        *,
        mean=(FASHION_MNIST_MEAN,),
        std=(FASHION_MNIST_STD,),
        in_chans=1,
        image_size=None,
    ) -> None:
        import torch

        self.images, self.labels = images, labels
        self.in_chans, self.image_size = in_chans, image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        if self.mean.shape[0] not in (1, in_chans) or self.std.shape[0] not in (1, in_chans):
            raise ValueError(f"mean and std need 1 or {in_chans} values")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int):
        import torch
        import torch.nn.functional as F

        image = torch.from_numpy(np.array(self.images[index], dtype=np.float32) / 255.0)[None]
        if self.image_size is not None and tuple(image.shape[-2:]) != (self.image_size,) * 2:
            image = F.interpolate(
                image[None], size=(self.image_size,) * 2, mode="bilinear", align_corners=False
            )[0]
        image = ((image - self.mean) / self.std).expand(self.in_chans, -1, -1).contiguous()
        return image, int(self.labels[index])


def open_dataset(
    data: str,
    *,
    split: str = "train",
    image_size: int | None = None,
    in_chans: int | None = None,
    mean=None,
    std=None,
):
    """``(dataset, num_classes, in_chans)`` of ``data``: "fashion-mnist", an idx folder or an ImageFolder.

    Images come out normalised: Fashion-MNIST statistics for idx data, ImageNet's for ImageFolder trees,
    unless ``mean``/``std`` are given. ImageFolder images are resized (shorter side) and centre-cropped to
    ``image_size`` when given (needed when the images differ in size).
    """
    root = FASHION_MNIST_ROOT if data.lower() in ("fashion-mnist", "fashion_mnist", "fmnist") else Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data {data!r} is neither 'fashion-mnist' nor a folder")
    if find_idx_pair(root, split) is not None:
        images, labels = load_idx_split(root, split)
        in_chans = in_chans or 1
        dataset = IdxDataset(
            images,
            labels,
            mean=mean or (FASHION_MNIST_MEAN,),
            std=std or (FASHION_MNIST_STD,),
            in_chans=in_chans,
            image_size=image_size,
        )
        return dataset, int(labels.max()) + 1, in_chans
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import datasets
    from torchvision.transforms import v2

    in_chans = in_chans or 3
    steps = [v2.ToImage()]
    if in_chans == 1:
        steps.append(v2.Grayscale(1))
    if image_size is not None:
        steps += [v2.Resize(image_size), v2.CenterCrop(image_size)]
    default_mean, default_std = (
        (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if in_chans == 3 else ((0.5,), (0.5,))
    )
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean or default_mean), list(std or default_std)),
    ]
    dataset = datasets.ImageFolder(str(root), transform=v2.Compose(steps))
    if len(dataset) == 0:
        raise ValueError(f"{root} holds no images")
    return dataset, len(dataset.classes), in_chans
