"""Per-channel mean and standard deviation of the datasets the tools know, on [0, 1] pixels: one table."""

from __future__ import annotations

# name -> (mean per channel, std per channel)
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # timm's IMAGENET_DEFAULT_MEAN / _STD
}
