"""timm ViTs with SAGE's cost levers: a ViT made with ``dynamic_img_size=True`` runs the saliency pass at
the lever's size; one with a fixed input size (timm's default) is refused at bind with a ValueError that
names the fix, instead of timm's ``AssertionError: Input height (16) doesn't match model (32)`` at the
first step. A tiny ``vit_tiny_patch16_224`` (32 px, patch 8, depth 2), exact and with each lever, at
``update_ratio`` 1 and 0.7."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_sage import SageMixup
from timm_sage.mixup import fixed_input_size

CLASSES = 5
LEVERS = {"exact": {}, "saliency_scale": {"saliency_scale": 0.5}, "saliency_size": {"saliency_size": 16}}


def _vit(dynamic: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"dynamic_img_size": True} if dynamic else {}
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=CLASSES,
        **kwargs,
    )  # fmt: skip


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=gen), torch.arange(4) % CLASSES


@pytest.mark.parametrize("lever", list(LEVERS))
@pytest.mark.parametrize("update_ratio", [1.0, 0.7])
def test_a_dynamic_size_vit_trains_with_every_lever(lever: str, update_ratio: float) -> None:
    model = _vit(dynamic=True)
    assert fixed_input_size(model) is None
    sizes: list[tuple[int, int]] = []
    model.patch_embed.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[-2:])))
    mixer = SageMixup(
        mode="sage", model=model, num_classes=CLASSES, seed=0, rand_pos=0.1, update_ratio=update_ratio,
        **LEVERS[lever],
    )  # fmt: skip
    x, y = _batch()
    before = [p.detach().clone() for p in model.parameters()]
    images, target = mixer(x, y)
    pass_side = 32 if lever == "exact" else 16
    assert sizes == [(pass_side, pass_side)]  # the saliency pass ran at the lever's size
    assert mixer.last.saliency.shape == (4, 32, 32) and bool(torch.isfinite(mixer.last.saliency).all())
    assert bool(mixer.last.mixed) and images.shape == x.shape
    loss = torch.sum(-target * F.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
    loss.backward()
    assert sizes[-1] == (32, 32)  # the training forward at full size
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("update_ratio", [1.0, 0.7])
def test_a_fixed_size_vit_runs_exact_and_refuses_the_levers_naming_the_fix(update_ratio: float) -> None:
    model = _vit(dynamic=False)
    assert fixed_input_size(model) == (32, 32)
    mixer = SageMixup(mode="sage", model=model, num_classes=CLASSES, seed=0, update_ratio=update_ratio)
    x, y = _batch()
    images, _ = mixer(x, y)
    assert bool(mixer.last.mixed) and images.shape == x.shape
    for lever in ("saliency_scale", "saliency_size"):
        options = LEVERS[lever]
        with pytest.raises(ValueError, match=f"{lever}=.*dynamic_img_size=True"):
            SageMixup(mode="sage", model=model, num_classes=CLASSES, update_ratio=update_ratio, **options)
        unbound = SageMixup(mode="sage", num_classes=CLASSES, update_ratio=update_ratio, **options)
        with pytest.raises(ValueError, match="--model-kwargs dynamic_img_size=True"):
            unbound.bind(model)
    # A saliency_size at least the model's side resizes nothing: allowed.
    SageMixup(mode="sage", model=model, num_classes=CLASSES, saliency_size=32)


def test_a_lever_size_off_the_patch_grid_names_dynamic_img_pad() -> None:
    """dynamic_img_size alone takes sizes that are multiples of the patch (8 here); the pass at 12 px is
    refused at the first call with the fix, and works with dynamic_img_pad=True."""
    x, y = _batch()
    model = _vit(dynamic=True)
    mixer = SageMixup(mode="sage", model=model, num_classes=CLASSES, seed=0, saliency_size=12)
    fix = r"saliency_size=12 .* at 12x12.*patch size 8x8.*dynamic_img_pad=True"
    with pytest.raises(ValueError, match=fix):
        mixer(x, y)
    torch.manual_seed(0)
    padded = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=CLASSES,
        dynamic_img_size=True, dynamic_img_pad=True,
    )  # fmt: skip
    mixer = SageMixup(mode="sage", model=padded, num_classes=CLASSES, seed=0, saliency_size=12)
    images, _ = mixer(x, y)
    assert bool(mixer.last.mixed) and images.shape == x.shape
