"""SAGE under mixed precision: autocast saliency, float32 search, extreme float16 magnitudes, GradScaler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timm_sage import SageMixup, functional

NUM_CLASSES = 5
# The extreme magnitudes a float16 gradient can hold: its smallest subnormal and its largest finite value.
FP16_TINY = 6e-8
FP16_HUGE = 6.5e4
SAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _net(seed: int = 0) -> nn.Module:
    """(B, 3, H, W) -> (B, 5) logits."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


def _batch(seed: int = 1, batch: int = 8, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(
        0, NUM_CLASSES, (batch,), generator=gen
    )


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def _draws(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(batch, generator=gen)
    return perm, functional.sample_translations(size, size, 0.2, generator=gen)


def test_saliency_pass_runs_under_autocast() -> None:
    model = _net()
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    x, y = _batch()
    mixer = SageMixup(mode="sage", model=model, num_classes=NUM_CLASSES, seed=0, amp_dtype=torch.bfloat16)
    images, target = mixer(x, y)
    assert seen == [torch.bfloat16], "the saliency forward did not run under bfloat16 autocast"
    assert images.dtype == torch.float32 and target.dtype == torch.float32
    assert torch.isfinite(images).all() and torch.isfinite(mixer.last.saliency).all()
    # The autocast map is close to the float32 one (same model, same batch).
    exact = functional.saliency_map(_net(), x, y)
    cosine = F.cosine_similarity(mixer.last.saliency.float().flatten(), exact.flatten(), dim=0)
    assert cosine > 0.98


def test_autocast_saliency_is_float32() -> None:
    """The contract of saliency_pass: the map is float32 whatever autocast the model ran under."""
    x, y = _batch()
    mixer = SageMixup(mode="sage", model=_net(), num_classes=NUM_CLASSES, seed=0, amp_dtype=torch.bfloat16)
    mixer(x, y)
    assert mixer.last.saliency.dtype == torch.float32


def test_saliency_under_outer_autocast_context_is_float32() -> None:
    """A caller's own ``torch.autocast`` region also covers the saliency pass; the map stays float32."""
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = functional.saliency_pass(_net(), x, y)
    assert result.saliency.shape == (8, 12, 12) and torch.isfinite(result.saliency).all()
    assert result.saliency.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_search_runs_in_float32(dtype: torch.dtype) -> None:
    """Low-precision saliency and images give exactly the float32 search, mixed in float32 then cast."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 10, 10, generator=gen).to(dtype)
    saliency = torch.rand(6, 10, 10, generator=gen).to(dtype)
    perm, translations = _draws(6, 10)
    low = functional.sage_mix(x, saliency, perm=perm, prior=0.4, translations=translations)
    ref = functional.sage_mix(x.float(), saliency.float(), perm=perm, prior=0.4, translations=translations)
    assert low.images.dtype == dtype and low.lam.dtype == torch.float32
    assert torch.equal(low.translation, ref.translation)
    assert torch.equal(low.lam, ref.lam)
    assert torch.equal(low.images, ref.images.to(dtype))


def _extreme_maps(batch: int, size: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    texture = torch.rand(batch, size, size, generator=gen) + 0.5
    sparse = torch.zeros(batch, size, size)
    sparse[:, 2, 3] = FP16_TINY
    return {
        "all_tiny": torch.full((batch, size, size), FP16_TINY),
        "textured_tiny": texture * FP16_TINY,
        "all_huge": torch.full((batch, size, size), FP16_HUGE),
        "textured_huge": texture / 1.5 * FP16_HUGE,
        "tiny_and_huge": torch.where(texture > 1.0, FP16_HUGE, FP16_TINY),
        "one_tiny_pixel": sparse,
        "huge_next_to_zero": torch.where(texture > 1.2, FP16_HUGE, 0.0),
    }


@pytest.mark.parametrize("dtype", SAGE_DTYPES)
@pytest.mark.parametrize("kind", sorted(_extreme_maps(1, 4)))
def test_extreme_float16_gradient_magnitudes(dtype: torch.dtype, kind: str) -> None:
    batch, size = 6, 9
    saliency = _extreme_maps(batch, size)[kind].to(dtype)
    assert torch.isfinite(saliency).all()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    perm, translations = _draws(batch, size)
    out = functional.sage_mix(x, saliency, perm=perm, prior=0.45, translations=translations)
    assert out.images.dtype == dtype and out.images.shape == x.shape
    assert torch.isfinite(out.images).all() and torch.isfinite(out.lam).all()
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    # Every mixed pixel is a convex combination of the anchor and the shifted partner (or zero).
    low = torch.minimum(x.float(), torch.zeros(())).amin((1, 2, 3)) - 1e-2
    high = torch.maximum(x.float(), torch.zeros(())).amax((1, 2, 3)) + 1e-2
    flat = out.images.float().flatten(1)
    assert bool((flat.amin(1) >= torch.minimum(low, low[perm])).all())
    assert bool((flat.amax(1) <= torch.maximum(high, high[perm])).all())


@pytest.mark.parametrize("scale", [2.0**-24, 2.0**15])
def test_search_is_scale_invariant_at_extremes(scale: float) -> None:
    """Scaling every map by a power of two (down to float16's subnormals, up to its max) changes nothing."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 3, 8, 8, generator=gen)
    saliency = torch.rand(5, 8, 8, generator=gen) + 0.25
    perm, translations = _draws(5, 8)
    ref = functional.sage_mix(x, saliency, perm=perm, prior=0.5, translations=translations)
    out = functional.sage_mix(x, saliency * scale, perm=perm, prior=0.5, translations=translations)
    assert torch.equal(out.translation, ref.translation)
    assert torch.equal(out.lam, ref.lam)
    assert torch.equal(out.images, ref.images)


def _train(steps: int, *, scaler: torch.amp.GradScaler | None, amp: bool, update_ratio: float) -> list[dict]:
    """A few SGD steps with SageMixup; per step the unscaled clean-pass grads and the full grads."""
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    mixer = SageMixup(
        mode="sage",
        model=model,
        num_classes=NUM_CLASSES,
        seed=3,
        rand_pos=0.1,
        update_ratio=update_ratio,
        amp_dtype=torch.bfloat16 if amp else None,
    )
    history = []
    for step in range(steps):
        x, y = _batch(seed=100 + step)
        optimizer.zero_grad(set_to_none=True)
        scale = scaler.get_scale() if scaler is not None else 1.0
        images, target = mixer(x, y)
        # (1 - r) * d l_clean / d params, as the weight carries it into the backward (never scaled there)
        clean = mixer.loss_weight.clean.flat * mixer.loss_weight.clean.factor
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        loss = _soft_ce(logits, target) * mixer.loss_weight
        if scaler is None:
            loss.backward()
            full = torch.cat([p.grad.flatten() for p in model.parameters()])
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            full = torch.cat([p.grad.flatten() for p in model.parameters()])
            scaler.step(optimizer)
            scaler.update()
        history.append({"clean": clean.clone(), "full": full.clone(), "scale": scale})
    return history


def test_grad_scaler_loop_matches_float32_loop_exactly() -> None:
    """GradScaler (enabled, CPU, growing every step) with r < 1 and float32 compute: the clean gradient is
    scaled with the same factor as the mixed loss (through the scaled backward of ``loss * loss_weight``),
    so unscaled gradients equal the plain loop's."""
    reference = _train(3, scaler=None, amp=False, update_ratio=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    scaled = _train(3, scaler=scaler, amp=False, update_ratio=0.5)
    assert [h["scale"] for h in scaled] == [2.0**10, 2.0**11, 2.0**12]
    for ref, got in zip(reference, scaled, strict=True):
        assert torch.allclose(got["clean"], ref["clean"], rtol=1e-5, atol=1e-8)
        assert torch.allclose(got["full"], ref["full"], rtol=1e-5, atol=1e-8)


def test_grad_scaler_bf16_loop_matches_float32_loop_to_tolerance() -> None:
    reference = _train(2, scaler=None, amp=False, update_ratio=0.7)
    scaled = _train(2, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12), amp=True, update_ratio=0.7)
    for ref, got in zip(reference, scaled, strict=True):
        assert torch.isfinite(got["full"]).all()
        clean_error = (got["clean"] - ref["clean"]).norm() / ref["clean"].norm()
        assert clean_error < 0.05, f"clean-pass gradient differs by {float(clean_error):.3g} (relative)"
        assert F.cosine_similarity(got["full"], ref["full"], dim=0) > 0.98


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float16_autocast_with_grad_scaler() -> None:
    device = torch.device("cuda")
    results = []
    for amp in (False, True):
        model = _net().to(device)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        mixer = SageMixup(
            mode="sage",
            model=model,
            num_classes=NUM_CLASSES,
            seed=3,
            update_ratio=0.5,
            amp_dtype=torch.float16 if amp else None,
        )
        x, y = (t.to(device) for t in _batch())
        images, target = mixer(x, y)
        assert mixer.last.saliency.dtype == torch.float32 and torch.isfinite(mixer.last.saliency).all()
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = model(images)
        scaler.scale(_soft_ce(logits, target) * mixer.loss_weight).backward()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler.unscale_(optimizer)
        results.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        half = functional.sage_mix(
            x.half(),
            mixer.last.saliency.half(),
            perm=mixer.last.perm.to(device),
            prior=0.5,
            translations=torch.tensor([[0, 0], [2, -3]], device=device),
        )
        assert half.images.dtype == torch.float16 and torch.isfinite(half.images).all()
    assert torch.isfinite(results[1]).all()
    assert F.cosine_similarity(results[0], results[1], dim=0) > 0.98
