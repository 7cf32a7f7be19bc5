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


class _Left(nn.Module):
    """Logits from the two leftmost columns only: the input gradient lives there."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(x[:, 0, :, :2].flatten(1))


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
    x = torch.ones(3, 1, 8, 8)  # raw = x * std + mean with mean 0, std 1: bright everywhere ...
    x[:, :, :, :4] = 0.0  # ... but the left half is background
    result = agreement.background_share(
        _Left(), [(x, torch.tensor([0, 1, 2]))], mean=0.0, std=1.0, config=agreement.SageConfig(blur_kernel=1)
    )
    assert result["area"] == pytest.approx(0.5)
    assert result["saliency"] == pytest.approx(1.0)  # every bit of saliency sits on the dark half


def test_object_share_counts_saliency_mass_on_the_mask():
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    config = agreement.SageConfig(blur_kernel=1)
    left = torch.zeros(3, 8, 8)
    left[:, :, :4] = 1.0  # the object covers the left half, where all the gradient is
    right = 1.0 - left
    assert agreement.object_share(_Left(), [(x, y)], [left], config=config) == pytest.approx(
        {"area": 0.5, "saliency": 1.0}
    )
    assert agreement.object_share(_Left(), [(x, y)], [right], config=config)["saliency"] == pytest.approx(0.0)


@pytest.mark.parametrize("method", ["cutmix", "sage"])
def test_object_survival_of_objects_that_fill_the_frame(method):
    """An object everywhere: the anchor keeps exactly its label share lam (the mean of its weight)."""
    batches = [(torch.randn(6, 1, 8, 8), torch.arange(6) % 4) for _ in range(3)]
    full = [torch.ones(6, 8, 8) for _ in range(3)]
    result = agreement.object_survival(batches, full, method, saliency_model=_Left(), seed=1)
    assert result["images"] == 18
    if method == "cutmix":
        # partner visible = 1 - lam too (no translation); anchor + partner = 1 for every image
        assert result["mean_anchor_visible"] + result["mean_partner_visible"] == pytest.approx(1.0)
    else:
        # the translated partner may leave the frame: what remains visible is at most its label share
        assert result["mean_anchor_visible"] + result["mean_partner_visible"] <= 1.0 + 1e-6
    # a fully visible share never counts as lost while its label is at least 25 %: lost needs < 25 % visible
    # and here visible == label share for the anchor, so an anchor is never lost
    assert result["anchor_lost"] == 0.0


def test_object_survival_counts_an_object_cut_out_while_its_label_stays():
    """Objects in a 2 x 2 corner: a CutMix box over it removes the anchor's object, not its label."""
    torch.manual_seed(0)
    batches = [(torch.randn(4, 1, 8, 8), torch.arange(4)) for _ in range(40)]
    corner = torch.zeros(4, 8, 8)
    corner[:, :2, :2] = 1.0
    result = agreement.object_survival(batches, [corner] * 40, "cutmix", seed=0)
    # over 40 boxes some cover the corner (anchor lost) with lam >= 0.25; none is lost without a box on it
    assert 0.0 < result["anchor_lost"] < 1.0
    # the partner's corner object shows only where the box is: most boxes miss the corner, so it is lost
    # far more often than the anchor's
    assert result["partner_lost"] > 2 * result["anchor_lost"]
    with pytest.raises(ValueError, match="saliency_model"):
        agreement.object_survival(batches, [corner] * 40, "sage")
