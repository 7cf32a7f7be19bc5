"""timm-sage agreement: the counts of what a judge model recognises in mixed images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from timm_sage.tools import agreement


class _StubMixer:
    """Returns fixed mixed images and soft targets, whatever the batch."""

    def __init__(self, targets: torch.Tensor) -> None:
        self.targets = targets

    def __call__(self, x, y):
        return x, self.targets


class _Judge(nn.Module):
    """Predicts the class written in pixel (0, 0, 0) of each image."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 4).float()


def test_counts_larger_smaller_and_neither(monkeypatch):
    targets = torch.tensor(
        [
            [0.7, 0.3, 0.0, 0.0],  # judge sees 0: the larger share
            [0.6, 0.4, 0.0, 0.0],  # judge sees 1: the smaller share
            [0.0, 0.0, 0.8, 0.2],  # judge sees 0: neither
            [0.0, 0.0, 1.0, 0.0],  # one class only: not a pair, not counted
            [0.0, 0.45, 0.55, 0.0],  # judge sees 2: the larger share
        ]
    )
    x = torch.zeros(5, 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 2.0, 2.0])
    monkeypatch.setattr(agreement, "_mixer", lambda *args, **kwargs: _StubMixer(targets))
    result = agreement.label_agreement(
        _Judge(), [(x, torch.zeros(5, dtype=torch.long))], "mixup", num_classes=4
    )
    assert result["pairs"] == 4
    assert result["larger"] == pytest.approx(2 / 4) and result["smaller"] == pytest.approx(1 / 4)
    assert result["neither"] == pytest.approx(1 / 4)
    assert result["mean_larger_share"] == pytest.approx((0.7 + 0.6 + 0.8 + 0.55) / 4)
    assert "| mixup | 4 | 50.0 % | 25.0 % | 25.0 % | 0.662 |" in agreement.table({"mixup": result})


def test_sage_needs_a_saliency_model_and_methods_are_named():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="saliency_model"):
        agreement.label_agreement(_Judge(), [(x, y)], "sage", num_classes=4)
    with pytest.raises(ValueError, match="method must be one of"):
        agreement.label_agreement(_Judge(), [(x, y)], "puzzlemix", num_classes=4)


def test_background_share_counts_saliency_mass_on_dark_pixels():
    class Left(nn.Module):
        """Logits from the left half only: the input gradient lives there."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(x[:, 0, :, :2].flatten(1))

    x = torch.ones(3, 1, 8, 8)  # raw = x * std + mean with mean 0, std 1: bright everywhere ...
    x[:, :, :, :4] = 0.0  # ... but the left half is background
    result = agreement.background_share(
        Left(), [(x, torch.tensor([0, 1, 2]))], mean=0.0, std=1.0, config=agreement.SageConfig(blur_kernel=1)
    )
    assert result["area"] == pytest.approx(0.5)
    assert result["saliency"] == pytest.approx(1.0)  # every bit of saliency sits on the dark half
