"""CIFAR Wide ResNet (Zagoruyko & Komodakis 2016), e.g. WRN16-8: 3x3 stem, 3 pre-activation stages."""

from __future__ import annotations

from timm_sage.models._common import check_arch, scaled
from timm_sage.models.preact_resnet import PreActNetwork


class WideResNet(PreActNetwork):
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
        self._build(in_chans, stem, planes, [per_stage] * 3, num_classes, drop_rate, block_dropout)
