"""CIFAR PreActResNet18 (He et al. 2016, identity mappings): 3x3 stem, no max-pool, 4 stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage.models._common import CifarClassifier, check_arch, init_weights, scaled


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-[dropout]-BN-ReLU-conv3x3 with a 1x1 projection when shapes change.

    The basic block of PreActResNet and, with ``block_dropout``, of the Wide ResNet.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, block_dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.block_dropout = block_dropout
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(out)))
        if self.block_dropout > 0:
            out = F.dropout(out, p=self.block_dropout, training=self.training)
        return self.conv2(out) + shortcut


class PreActNetwork(CifarClassifier):
    """3x3 stem, stages of :class:`PreActBlock` (the first block of every stage after the first strides
    by 2), a final BN-ReLU and timm's classifier head: the shape PreActResNet and WRN share."""

    def _build(
        self,
        in_chans: int,
        stem_planes: int,
        planes: list[int],
        blocks_per_stage: list[int],
        num_classes: int,
        drop_rate: float,
        block_dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        self.stem = nn.Conv2d(in_chans, stem_planes, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        in_planes = stem_planes
        for index, (count, out_planes) in enumerate(zip(blocks_per_stage, planes, strict=True)):
            blocks = []
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(PreActBlock(in_planes, out_planes, stride, block_dropout))
                in_planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_planes)
        self._init_head(in_planes, num_classes, drop_rate)
        init_weights(self)
        if zero_init_residual:
            # Each residual branch starts at zero, so the network starts as its stem, the shortcuts and the
            # head (Goyal et al. 2017 zero the last BN of a branch; a pre-activation branch ends in a conv).
            for module in self.modules():
                if isinstance(module, PreActBlock):
                    nn.init.zeros_(module.conv2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H', W') after the final BN-ReLU."""
        return F.relu(self.norm(self.stages(self.stem(x))))


class PreActResNet(PreActNetwork):
    """Pre-activation ResNet for small images.

    Args:
        layers: blocks per stage (PreActResNet18: (2, 2, 2, 2)).
        num_classes: classifier outputs (0: no classifier, features only).
        in_chans: input channels (1 for Fashion-MNIST).
        width: multiplier of the stage widths (64, 128, 256, 512).
        base_width: stage-1 width before ``width`` (64 in the paper).
        drop_rate: dropout before the classifier.
        zero_init_residual: start every residual branch at zero (its last convolution's weights), so the
            network starts close to a shallow one; off by default (the paper's init).

    Input (B, in_chans, H, W) float, any H, W >= 8; output (B, num_classes) logits.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        base_width: int = 64,
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
        **_: object,
    ) -> None:
        super().__init__()
        check_arch(num_classes, in_chans, width, drop_rate)
        if not isinstance(zero_init_residual, bool):
            raise TypeError(f"zero_init_residual must be a bool, got {zero_init_residual!r}")
        planes = [scaled(base_width * 2**i, width) for i in range(len(layers))]
        self._build(
            in_chans, planes[0], planes, list(layers), num_classes, drop_rate,
            zero_init_residual=zero_init_residual,
        )  # fmt: skip
