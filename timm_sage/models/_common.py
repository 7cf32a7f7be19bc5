"""What the CIFAR networks share: the timm classifier interface and their default data config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from timm_sage.data.stats import DATASET_STATS

CIFAR_MEAN, CIFAR_STD = DATASET_STATS["cifar10"]


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """timm ``pretrained_cfg`` of a CIFAR network: 32x32 input, no resize crop, no weights."""
    cfg = {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "stem",
        "classifier": "fc",
    }
    cfg.update(overrides)
    return cfg


def check_arch(num_classes: int, in_chans: int, width: float, drop_rate: float) -> None:
    """Argument checks shared by the CIFAR networks (ValueError/TypeError naming the argument)."""
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < (0 if name == "num_classes" else 1):
            raise ValueError(f"{name} must be {'>= 0' if name == 'num_classes' else '>= 1'}, got {value}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
        raise ValueError(f"drop_rate must lie in [0, 1), got {drop_rate!r}")


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


class CifarClassifier(nn.Module):
    """timm's classifier interface over ``forward_features`` (B, C, h, w) -> pooled -> ``fc``.

    Subclasses build ``self.fc`` via :meth:`_init_head` and implement ``forward_features``.
    """

    num_features: int
    fc: nn.Module

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = float(drop_rate)
        self.global_pool = "avg"
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be 'avg' for CIFAR networks, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) features -> (B, num_classes) logits (or (B, C) with ``pre_logits``)."""
        x = x.mean((2, 3))
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) float -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions (fan-out), unit BatchNorm, zero biases: the CIFAR reference init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
