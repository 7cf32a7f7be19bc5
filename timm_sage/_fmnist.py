"""A tiny reader for Fashion-MNIST's idx files (``*-idx3-ubyte.gz`` images, ``*-idx1-ubyte.gz`` labels).

The idx format: a big-endian header ``0x00 0x00 dtype ndim``, then ``ndim`` big-endian uint32 sizes, then
the raw data. Fashion-MNIST uses dtype ``0x08`` (uint8). Only the first ``limit`` items are decoded.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-pixel statistics of the training images (values in [0, 1]), the usual normalisation.
MEAN = 0.2860
STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem, root / "raw" / f"{stem}.gz", root / "raw" / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {stem}[.gz] under {root}: is this a Fashion-MNIST folder?")


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """Decode an idx file (optionally gzipped) into a uint8 array of shape (N, ...), N <= ``limit``."""
    with _open(Path(path)) as handle:
        zero, dtype_code, ndim = struct.unpack(">HBB", handle.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not a uint8 idx file (header {zero:#x}, dtype {dtype_code:#x})")
        shape = list(struct.unpack(f">{ndim}I", handle.read(4 * ndim)))
        if limit is not None:
            shape[0] = min(shape[0], limit)
        count = int(np.prod(shape))
        data = handle.read(count)
    if len(data) != count:
        raise ValueError(f"{path} is truncated: expected {count} bytes of data, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load(root: str | Path = DEFAULT_ROOT, split: str = "test", limit: int | None = None):
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split (``"train"`` or ``"test"``)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {root} does not exist")
    image_stem, label_stem = _FILES[split]
    images = read_idx(_find(root, image_stem), limit)
    labels = read_idx(_find(root, label_stem), limit).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def is_fashion_mnist(root: str | Path) -> bool:
    """True when ``root`` holds Fashion-MNIST/MNIST-style idx files."""
    root = Path(root)
    try:
        _find(root, _FILES["test"][0])
    except FileNotFoundError:
        return False
    return True
