"""CIFAR ResNeXt (Xie et al. 2017), e.g. ResNeXt29-4-24: 3x3 stem, 3 stages of grouped bottlenecks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage.models._common import CifarClassifier, check_arch, init_weights, scaled


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce, 3x3 grouped (``cardinality`` groups of ``group_width``), 1x1 expand; post-activation."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, cardinality: int, group_width: int) -> None:
        super().__init__()
        inner = cardinality * group_width
        out_planes = planes * self.expansion
        self.conv_reduce = nn.Conv2d(in_planes, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_conv = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, out_planes, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_planes)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))
            if stride != 1 or in_planes != out_planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + shortcut)


class CifarResNeXt(CifarClassifier):
    """ResNeXt-depth-C-d for 32x32 images: ``(depth - 2) / 9`` bottlenecks per stage.

    Args:
        depth: 9n + 2 (29 for ResNeXt29).
        cardinality: C, groups of the 3x3 convolution (4).
        base_width: d, the group width of stage 1 (24); doubles per stage.
        num_classes, in_chans, drop_rate: as for every CIFAR network here.
        width: extra multiplier of every width (1.0 is the paper's network).

    Stage planes are 64, 128, 256 (outputs 4x that: 256, 512, 1024). Input (B, in_chans, H, W);
    output (B, num_classes) logits.
    """

    def __init__(
        self,
        depth: int = 29,
        cardinality: int = 4,
        base_width: int = 24,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        drop_rate: float = 0.0,
        **_: object,
    ) -> None:
        super().__init__()
        check_arch(num_classes, in_chans, width, drop_rate)
        if (depth - 2) % 9 != 0 or depth < 11:
            raise ValueError(f"depth must be 9n + 2 with n >= 1, got {depth}")
        per_stage = (depth - 2) // 9
        stem = scaled(64, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        in_planes = stem
        for index in range(3):
            planes = scaled(64 * 2**index, width)
            group_width = scaled(base_width * 2**index, width)
            blocks = []
            for block_index in range(per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(ResNeXtBottleneck(in_planes, planes, stride, cardinality, group_width))
                in_planes = planes * ResNeXtBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self._init_head(in_planes, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/4, W/4)."""
        return self.stages(self.stem(x))
