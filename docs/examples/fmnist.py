"""Fashion-MNIST for the examples: the idx files as numpy arrays, a small CNN and its train/test loop.

The files live in /usr/share/datasets/fashion-mnist (``train-images-idx3-ubyte.gz`` ...); set
``FASHION_MNIST`` to another folder holding the same four files.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
MEAN, STD = 0.2860, 0.3530


def _read(path: Path, limit: int | None) -> np.ndarray:
    """The first ``limit`` items of an idx.gz file (only those bytes are decompressed)."""
    with gzip.open(path, "rb") as handle:
        _, _, ndim = struct.unpack(">HBB", handle.read(4))
        shape = list(struct.unpack(f">{ndim}I", handle.read(4 * ndim)))
        shape[0] = shape[0] if limit is None else min(limit, shape[0])
        data = handle.read(int(np.prod(shape)))
        return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def load(split: str = "train", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the first ``limit`` samples of ``split``."""
    prefix = "train" if split == "train" else "t10k"
    images = _read(ROOT / f"{prefix}-images-idx3-ubyte.gz", limit)
    labels = _read(ROOT / f"{prefix}-labels-idx1-ubyte.gz", limit).astype(np.int64)
    return images, labels


def small_cnn(num_classes: int = 10) -> nn.Module:
    """A 2-block CNN for 1 x 28 x 28 inputs: (B, 1, 28, 28) float -> (B, num_classes) logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, num_classes),
    )


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    steps: int,
    mix: Callable | None = None,
) -> None:
    """``steps`` optimizer steps on soft targets, cycling over ``loader``.

    ``loader`` yields ``(images, soft_labels)`` or, with ``mix``, ``(images, labels)`` that ``mix`` turns
    into ``(mixed images, soft labels)`` (the saliency pass of a bound model runs there, in train mode).
    """
    step = 0
    model.train()
    while step < steps:
        for images, targets in loader:
            if mix is not None:
                images, targets = mix(images, targets)
            loss = torch.sum(-targets * F.log_softmax(model(images), dim=1), dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"step {step:5d}  mixed loss {loss.item():.4f}")
            if step == steps:
                break


def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on normalised ``images`` (N, 1, 28, 28) and ``labels`` (N,)."""
    model.eval()
    with torch.no_grad():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    print(f"test accuracy on {len(labels)} images: {accuracy:.4f}")
    return accuracy
