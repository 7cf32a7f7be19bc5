"""CIFAR Wide ResNet (Zagoruyko & Komodakis 2016), e.g. WRN16-8: 3x3 stem, 3 pre-activation stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage.models._common import CifarClassifier, check_arch, init_weights, scaled
from timm_sage.models.preact_resnet import PreActBlock


class WideResNet(CifarClassifier):
    """WRN-depth-k: ``(depth - 4) / 6`` blocks per stage, widths (16k, 32k, 64k), stem width 16.

    Args:
        depth: 6n + 4 (16 for WRN16-8).
        widen_factor: k (8 for WRN16-8).
        num_classes, in_chans, drop_rate: as for every CIFAR network here.
        width: extra multiplier of every width (1.0 is the paper's network).
        block_dropout: dropout between the two convolutions of a block (0 in the SAGE recipe).

    Input (B, in_chans, H, W) float; output (B, num_classes) logits.
    """

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 8,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        drop_rate: float = 0.0,
        block_dropout: float = 0.0,
        **_: object,
    ) -> None:
        super().__init__()
        check_arch(num_classes, in_chans, width, drop_rate)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n + 4 with n >= 1, got {depth}")
        per_stage = (depth - 4) // 6
        stem = scaled(16, width)
        planes = [scaled(16 * widen_factor * 2**i, width) for i in range(3)]
        self.stem = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        in_planes = stem
        for index, out_planes in enumerate(planes):
            blocks = []
            for block_index in range(per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(PreActBlock(in_planes, out_planes, stride, block_dropout))
                in_planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_planes)
        self._init_head(in_planes, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/4, W/4)."""
        return F.relu(self.norm(self.stages(self.stem(x))))
