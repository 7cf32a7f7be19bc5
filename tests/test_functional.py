"""The functional core against the loop oracle, its properties and its argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sage_oracle import oracle_sage, zero_padded_shift
from torch import nn

from timm_sage import functional as FN
from timm_sage.core import search as _search


def _batch(seed: int, batch: int, channels: int, height: int, width: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g)
    saliency = torch.rand(batch, height, width, generator=g) ** 2
    perm = torch.randperm(batch, generator=g)
    return g, x, saliency, perm


def _all_translations(height: int, width: int) -> torch.Tensor:
    dy, dx = torch.meshgrid(torch.arange(-height + 1, height), torch.arange(-width + 1, width), indexing="ij")
    return torch.stack((dy.flatten(), dx.flatten()), 1)


# ---------------------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize(
    "batch,channels,height,width,rand_pos",
    [
        (4, 3, 8, 8, 0.1),  # square
        (3, 1, 7, 11, 0.2),  # non-square, odd sizes
        (1, 3, 9, 5, 0.05),  # B = 1
        (5, 2, 6, 6, 0.0),  # K = 1 (rand_pos tiny: at least one candidate)
        (3, 3, 5, 7, 1.0),  # K = all candidates
        (6, 3, 16, 12, 0.02),
    ],
)
def test_fast_path_matches_loop_oracle(batch, channels, height, width, rand_pos):
    g, x, saliency, perm = _batch(batch * 100 + height, batch, channels, height, width)
    if rand_pos == 0.0:
        translations = torch.tensor([[2, -1]])
    else:
        translations = FN.sample_translations(height, width, rand_pos, generator=g)
    if rand_pos == 1.0:
        assert translations.shape[0] == (2 * height - 1) * (2 * width - 1)
    prior = torch.rand(batch, generator=g) * 0.7
    out = FN.sage_mix(x, saliency, perm=perm, prior=prior, translations=translations)
    images, lam, chosen, _ = oracle_sage(x, saliency, perm, prior, translations)
    assert torch.equal(out.translation, chosen)
    torch.testing.assert_close(out.images, images.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.lam, lam.float(), atol=1e-5, rtol=0)


def test_scores_match_oracle_and_choice_is_first_argmax():
    _, x, saliency, perm = _batch(3, 4, 1, 6, 9)
    translations = _all_translations(6, 9)
    scores = FN.translation_scores(saliency, perm=perm, prior=0.5, translations=translations)
    *_, oracle_scores = oracle_sage(x, saliency, perm, 0.5, translations)
    torch.testing.assert_close(scores.double(), oracle_scores, atol=1e-6, rtol=1e-5)
    out = FN.sage_mix(x, saliency, perm=perm, prior=0.5, translations=translations)
    assert torch.equal(out.translation, translations[scores.argmax(1)])


@pytest.mark.parametrize("kernel", _search.SEARCH_KERNELS)
@pytest.mark.parametrize("batch,height,width", [(4, 6, 9), (1, 1, 1), (2, 1, 7), (3, 8, 3)])
def test_both_search_kernels_match_the_oracle_scores(kernel, batch, height, width):
    _, x, saliency, perm = _batch(7, batch, 1, height, width)
    translations = _all_translations(height, width)
    s0, s1 = FN.normalise_saliency(saliency, perm, torch.full((batch,), 0.5))
    scores = _search.translation_scores(s0, s1, translations, kernel=kernel)
    *_, oracle_scores = oracle_sage(x, saliency, perm, 0.5, translations)
    torch.testing.assert_close(scores.double(), oracle_scores, atol=1e-6, rtol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 6),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    zero_fraction=st.sampled_from([0.0, 0.5, 0.95]),
)
def test_overlap_and_windows_kernels_agree(seed, batch, height, width, zero_fraction):
    g = torch.Generator().manual_seed(seed)
    saliency = torch.rand(batch, height, width, generator=g)
    saliency = saliency * (torch.rand(batch, height, width, generator=g) >= zero_fraction)
    perm = torch.randperm(batch, generator=g)
    s0, s1 = FN.normalise_saliency(saliency, perm, torch.rand(batch, generator=g))
    translations = FN.sample_translations(height, width, 0.3, generator=g)
    overlap = _search.translation_scores(s0, s1, translations, kernel="overlap")
    windows = _search.translation_scores(s0, s1, translations, kernel="windows", chunk_elements=97)
    torch.testing.assert_close(overlap, windows, atol=1e-6, rtol=1e-5)


def test_an_unknown_search_kernel_is_named():
    maps = torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match="kernel must be one of windows, overlap"):
        _search.translation_scores(maps, maps, torch.zeros(1, 2, dtype=torch.long), kernel="fft")


def test_the_kernel_is_chosen_from_metadata():
    translations = torch.zeros(3, 2, dtype=torch.long)
    assert _search.choose_kernel(torch.zeros(8, 128, 128), translations) == "overlap"
    assert _search.choose_kernel(torch.zeros(2, 16, 16), translations) == "windows"  # below the size floor
    if torch.cuda.is_available():
        assert _search.choose_kernel(torch.zeros(8, 128, 128, device="cuda"), translations) == "windows"
    # sage_mix at a size that takes the overlap kernel keeps matching the oracle
    g, x, saliency, perm = _batch(11, 4, 2, 64, 64)
    translations = FN.sample_translations(64, 64, 0.01, generator=g)
    assert _search.choose_kernel(saliency, translations) == "overlap"
    out = FN.sage_mix(x, saliency, perm=perm, prior=0.4, translations=translations)
    images, lam, chosen, _ = oracle_sage(x, saliency, perm, 0.4, translations)
    assert torch.equal(out.translation, chosen)
    torch.testing.assert_close(out.images, images.float(), atol=1e-5, rtol=0)


def test_ties_pick_the_first_candidate():
    # Uniform maps and the same shift listed twice: both copies tie, the first index must win.
    saliency = torch.ones(2, 5, 5)
    translations = torch.tensor([[3, 3], [0, 1], [0, 1], [1, 0]])
    s0, s1 = FN.normalise_saliency(saliency, torch.tensor([1, 0]), torch.full((2,), 0.5))
    best = _search.best_translation(s0, s1, translations)
    scores = _search.translation_scores(s0, s1, translations)
    assert scores[0, 1] == scores[0, 2]
    assert int(best[0]) == int(torch.nonzero(scores[0] == scores[0].max())[0])


def test_chunking_does_not_change_the_result():
    _, x, saliency, perm = _batch(5, 5, 3, 10, 10)
    translations = FN.sample_translations(10, 10, 0.5, generator=torch.Generator().manual_seed(1))
    full = FN.sage_mix(x, saliency, perm=perm, prior=0.4, translations=translations)
    tiny = FN.sage_mix(x, saliency, perm=perm, prior=0.4, translations=translations, chunk_elements=1)
    assert torch.equal(full.translation, tiny.translation)
    assert torch.equal(full.images, tiny.images)


def test_shift_images_against_oracle():
    x = torch.randn(3, 2, 5, 7)
    translation = torch.tensor([[1, -2], [-4, 6], [0, 0]])
    shifted = _search.shift_images(x, translation)
    for b in range(3):
        expected = zero_padded_shift(x[b], int(translation[b, 0]), int(translation[b, 1]))
        assert torch.equal(shifted[b], expected)


# --------------------------------------------------------------------------------------- pooled search
def test_pooled_search_equals_exact_search_on_block_constant_maps():
    # Maps constant on 4x4 blocks and shifts on the pooled grid: the pooled search sees the same problem.
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(3, 4, 4, generator=g)
    saliency = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
    x = torch.randn(3, 3, 16, 16, generator=g)
    perm = torch.tensor([2, 0, 1])
    translations = FN.sample_translations(16, 16, 0.5, generator=g, search_size=4)
    assert bool((translations % 4 == 0).all())
    pooled = FN.sage_mix(x, saliency, perm=perm, prior=0.5, translations=translations, search_size=4)
    exact = FN.sage_mix(x, saliency, perm=perm, prior=0.5, translations=translations)
    # Pooled sums of shifted block maps equal the exact sums up to the block structure: scores agree in order.
    scores = FN.translation_scores(saliency, perm=perm, prior=0.5, translations=translations)
    chosen_scores = scores.gather(1, _index_of(translations, pooled.translation)[:, None])[:, 0]
    torch.testing.assert_close(chosen_scores, scores.max(1).values, atol=1e-6, rtol=1e-5)
    assert pooled.images.shape == exact.images.shape


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(5, 20), search_size=st.integers(2, 6))
def test_repeated_pooled_shifts_are_dropped_on_the_host_and_change_nothing(seed, size, search_size):
    """Full-resolution candidates searched at a pooled size share pooled shifts; the host drops the
    repeats (first kept, order kept) and the search picks the same candidate for every image."""
    g = torch.Generator().manual_seed(seed)
    translations = FN.sample_translations(size, size, 0.3, generator=g)
    factor = _search.pooling_factor(size, size, search_size)
    kept = _search.first_of_each_pooled_shift(translations, size, size, search_size)
    pooled = [tuple(r) for r in _search.pooled_shifts(translations, size, size, factor).tolist()]
    first = {}
    for k, shift in enumerate(pooled):
        first.setdefault(shift, k)
    assert kept.tolist() == translations[sorted(first.values())].tolist()
    s0, s1 = FN.normalise_saliency(
        torch.rand(3, size, size, generator=g), torch.tensor([1, 2, 0]), torch.full((3,), 0.4)
    )
    every = _search.best_translation(s0, s1, translations, search_size=search_size)
    once = _search.best_translation(s0, s1, kept, search_size=search_size)
    assert torch.equal(translations[every], kept[once])
    drawn = FN.sample_translations(size, size, 0.3, generator=g, search_size=search_size)
    assert _search.first_of_each_pooled_shift(drawn, size, size, search_size) is drawn  # no repeats


def _index_of(translations: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    matches = (translations[None] == chosen[:, None]).all(-1)
    return matches.float().argmax(1)


def test_sample_translations_with_search_size_counts_on_pooled_grid():
    t = FN.sample_translations(224, 224, 0.01, generator=torch.Generator().manual_seed(0), search_size=56)
    assert t.shape == (math.floor(111 * 111 * 0.01), 2)
    assert bool((t % 4 == 0).all()) and int(t.abs().max()) <= 223
    exact = FN.sample_translations(224, 224, 0.01, generator=torch.Generator().manual_seed(0))
    assert exact.shape == (math.floor(447 * 447 * 0.01), 2)


def test_sample_translations_count_range_and_uniqueness():
    t = FN.sample_translations(32, 32, 0.01, generator=torch.Generator().manual_seed(0))
    assert t.shape == (39, 2) and t.dtype == torch.int64
    assert len({tuple(r) for r in t.tolist()}) == 39
    assert int(t.abs().max()) <= 31
    everything = FN.sample_translations(3, 4, 1.0)
    assert {tuple(r) for r in everything.tolist()} == {tuple(r) for r in _all_translations(3, 4).tolist()}
    assert FN.sample_translations(2, 2, 1e-9).shape == (1, 2)


def test_sample_translations_is_seeded():
    a = FN.sample_translations(20, 30, 0.1, generator=torch.Generator().manual_seed(7))
    b = FN.sample_translations(20, 30, 0.1, generator=torch.Generator().manual_seed(7))
    c = FN.sample_translations(20, 30, 0.1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------------------- properties
maps = st.integers(0, 2**31 - 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=maps,
    batch=st.integers(1, 6),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    prior=st.floats(0.0, 1.0),
    zero_fraction=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_mix_properties(seed, batch, height, width, prior, zero_fraction):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2, height, width, generator=g)
    saliency = torch.rand(batch, height, width, generator=g)
    saliency[torch.rand(batch, generator=g) < zero_fraction] = 0.0  # all-zero maps count as uniform
    perm = torch.randperm(batch, generator=g)
    translations = FN.sample_translations(height, width, 0.3, generator=g)
    out = FN.sage_mix(x, saliency, perm=perm, prior=prior, translations=translations)
    assert out.images.shape == x.shape and out.images.dtype == x.dtype
    assert bool(torch.isfinite(out.images).all()) and bool(torch.isfinite(out.lam).all())
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    # The chosen translation scores at least as high as every other candidate.
    scores = FN.translation_scores(saliency, perm=perm, prior=prior, translations=translations)
    chosen = scores.gather(1, _index_of(translations, out.translation)[:, None])[:, 0]
    assert bool((chosen >= scores.max(1).values - 1e-6).all())
    # Each pixel is a convex combination of the anchor and the shifted partner.
    mask = FN.mixing_mask(saliency, perm=perm, prior=prior, translation=out.translation)
    partner = _search.shift_images(x[perm], out.translation)
    torch.testing.assert_close(
        out.images, mask[:, None] * x + (1 - mask[:, None]) * partner, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(out.lam, mask.mean((1, 2)))
    # Soft targets sum to 1.
    target = torch.randint(0, 5, (batch,), generator=g)
    soft = FN.sage_target(target, perm=perm, lam=out.lam, num_classes=5, label_smoothing=0.1)
    torch.testing.assert_close(soft.sum(1), torch.ones(batch))


@settings(max_examples=30, deadline=None)
@given(seed=maps, batch=st.integers(1, 5), size=st.integers(2, 8))
def test_prior_one_returns_the_anchor(seed, batch, size):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    saliency = torch.rand(batch, size, size, generator=g) + 0.01
    translations = FN.sample_translations(size, size, 0.5, generator=g)
    out = FN.sage_mix(
        x, saliency, perm=torch.randperm(batch, generator=g), prior=1.0, translations=translations
    )
    assert torch.equal(out.images, x)
    assert torch.equal(out.lam, torch.ones(batch))


def test_where_the_shifted_partner_saliency_is_zero_the_anchor_is_kept():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g)
    saliency = torch.rand(2, 8, 8, generator=g) + 0.01
    translations = torch.tensor([[5, -6]])  # a single candidate: overlap rows 5..7, cols 0..1
    out = FN.sage_mix(x, saliency, perm=torch.tensor([1, 0]), prior=0.3, translations=translations)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[5:, :2] = False
    assert torch.equal(out.images[:, :, outside], x[:, :, outside])
    assert not torch.equal(out.images[:, :, ~outside], x[:, :, ~outside])


def test_zero_partner_weight_and_zero_maps_are_finite():
    x = torch.randn(3, 1, 4, 4)
    out = FN.sage_mix(
        x, torch.zeros(3, 4, 4), perm=torch.tensor([1, 2, 0]), prior=0.0, translations=torch.tensor([[0, 0]])
    )
    # prior 0: the anchor keeps nothing; with the zero shift the partner replaces it entirely.
    assert torch.equal(out.images, x[[1, 2, 0]])
    assert torch.equal(out.lam, torch.zeros(3))


@pytest.mark.parametrize("scale", [1e-40, 1e-30, 1.0, 1e30, 3e38])
def test_extreme_magnitudes_stay_finite(scale):
    g = torch.Generator().manual_seed(0)
    saliency = torch.rand(4, 6, 6, generator=g) * scale
    x = torch.randn(4, 3, 6, 6, generator=g)
    out = FN.sage_mix(
        x, saliency, perm=torch.tensor([3, 2, 1, 0]), prior=0.5, translations=_all_translations(6, 6)
    )
    assert bool(torch.isfinite(out.images).all()) and bool(torch.isfinite(out.lam).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_images(dtype):
    _, x, saliency, perm = _batch(1, 4, 3, 12, 10)
    translations = FN.sample_translations(12, 10, 0.2, generator=torch.Generator().manual_seed(0))
    ref = FN.sage_mix(x, saliency, perm=perm, prior=0.5, translations=translations)
    out = FN.sage_mix(x.to(dtype), saliency.to(dtype), perm=perm, prior=0.5, translations=translations)
    assert out.images.dtype == dtype
    tol = 1e-5 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(out.images.float(), ref.images, atol=tol, rtol=tol)


def test_channels_last_is_kept():
    _, x, saliency, perm = _batch(2, 4, 3, 8, 8)
    x = x.contiguous(memory_format=torch.channels_last)
    out = FN.sage_mix(x, saliency, perm=perm, prior=0.5, translations=torch.tensor([[1, 1]]))
    assert out.images.is_contiguous(memory_format=torch.channels_last)


def test_outputs_are_detached_and_inputs_untouched():
    _, x, saliency, perm = _batch(2, 3, 3, 6, 6)
    x.requires_grad_(True)
    before = x.detach().clone()
    out = FN.sage_mix(x, saliency, perm=perm, prior=0.5, translations=torch.tensor([[1, 2]]))
    assert not out.images.requires_grad
    assert torch.equal(x.detach(), before)


# ----------------------------------------------------------------------------------------- bad input
def _good():
    _, x, saliency, perm = _batch(0, 3, 3, 6, 6)
    return dict(x=x, saliency=saliency, perm=perm, prior=0.5, translations=torch.tensor([[1, 1]]))


@pytest.mark.parametrize(
    "change,error,words",
    [
        (dict(saliency=-torch.ones(3, 6, 6)), ValueError, "saliency must be non-negative"),
        (dict(saliency=torch.full((3, 6, 6), math.nan)), ValueError, "saliency must be finite"),
        (dict(saliency=torch.full((3, 6, 6), math.inf)), ValueError, "saliency must be finite"),
        (dict(saliency=torch.ones(3, 5, 6)), ValueError, "saliency must have shape"),
        (dict(saliency=torch.ones(3, 6, 6, dtype=torch.long)), TypeError, "saliency must be a floating"),
        (dict(perm=torch.tensor([0, 0, 1])), ValueError, "perm must be a permutation"),
        (dict(perm=torch.tensor([0, 1])), ValueError, "perm must have shape"),
        (dict(perm=torch.tensor([0.0, 1.0, 2.0])), TypeError, "perm must be an integer"),
        (dict(translations=torch.tensor([[6, 0]])), ValueError, "translations out of range"),
        (dict(translations=torch.tensor([[0, -6]])), ValueError, "translations out of range"),
        (dict(translations=torch.zeros(0, 2, dtype=torch.long)), ValueError, "translations must have shape"),
        (dict(translations=torch.tensor([[0.5, 1.0]])), TypeError, "translations must be an integer"),
        (dict(x=torch.zeros(3, 3, 6, 6, dtype=torch.uint8)), TypeError, "x must be a floating"),
        (dict(x=torch.zeros(3, 6, 6)), ValueError, "x must have shape"),
        (dict(prior=1.5), ValueError, "prior must lie in"),
        (dict(prior=-0.1), ValueError, "prior must lie in"),
        (dict(prior=math.nan), ValueError, "prior must lie in"),
        (dict(prior=torch.tensor([0.5, 0.5, 2.0])), ValueError, "prior must lie in"),
        (dict(prior="half"), TypeError, "prior must be a number"),
        (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_input_is_named(change, error, words):
    kwargs = _good()
    kwargs.update(change)
    x = kwargs.pop("x")
    saliency = kwargs.pop("saliency")
    with pytest.raises(error, match=words):
        FN.sage_mix(x, saliency, **kwargs)


def test_bad_search_size_and_sampling_arguments():
    kwargs = _good()
    with pytest.raises(ValueError, match="search_size"):
        FN.sage_mix(kwargs.pop("x"), kwargs.pop("saliency"), search_size=0, **kwargs)
    with pytest.raises(ValueError, match="rand_pos"):
        FN.sample_translations(8, 8, 0.0)
    with pytest.raises(ValueError, match="rand_pos"):
        FN.sample_translations(8, 8, 1.5)
    with pytest.raises(TypeError, match="height"):
        FN.sample_translations(8.0, 8, 0.1)
    with pytest.raises(TypeError, match="generator"):
        FN.sample_translations(8, 8, 0.1, generator=0)


def test_sage_target_checks_and_smoothing():
    perm = torch.tensor([1, 0])
    soft = FN.sage_target(torch.tensor([0, 2]), perm=perm, lam=torch.tensor([0.75, 0.5]), num_classes=4)
    assert torch.allclose(soft, torch.tensor([[0.75, 0, 0.25, 0], [0.5, 0, 0.5, 0]]))
    smooth = FN.sage_target(
        torch.tensor([0, 0]), perm=perm, lam=torch.ones(2), num_classes=4, label_smoothing=0.2
    )
    assert torch.allclose(smooth[0], torch.tensor([0.85, 0.05, 0.05, 0.05]))
    with pytest.raises(ValueError, match="target labels must lie"):
        FN.sage_target(torch.tensor([0, 4]), perm=perm, lam=torch.ones(2), num_classes=4)
    with pytest.raises(ValueError, match="label_smoothing"):
        FN.sage_target(torch.tensor([0, 1]), perm=perm, lam=torch.ones(2), num_classes=4, label_smoothing=2.0)


# ------------------------------------------------------------------------------------------- saliency
class _TinyNet(nn.Module):
    def __init__(self, channels: int = 3, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _reference_saliency(model, x, y, loss, reduce):
    inputs = x.clone().requires_grad_(True)
    logits = model(inputs)
    if loss == "bce_softmax":
        value = F.binary_cross_entropy(torch.softmax(logits, 1), F.one_hot(y, logits.shape[1]).float())
    else:
        value = F.cross_entropy(logits, y)
    (grad,) = torch.autograd.grad(value, inputs)
    reduced = grad.abs().mean(1) if reduce == "mean_abs" else grad.norm(dim=1)
    # torchvision's GaussianBlur is the contract for the smoothing.
    from torchvision.transforms.v2 import functional as TF

    return TF.gaussian_blur(reduced[:, None], [5, 5], [1.0, 1.0])[:, 0]


@pytest.mark.parametrize("loss", ["bce_softmax", "cross_entropy"])
@pytest.mark.parametrize("reduce", ["mean_abs", "l2"])
def test_saliency_map_matches_reference_and_leaves_grads(loss, reduce):
    torch.manual_seed(0)
    model = _TinyNet()
    model.train()
    x, y = torch.randn(4, 3, 9, 7), torch.tensor([0, 1, 4, 2])
    marker = [torch.full_like(p, 0.125) for p in model.parameters()]
    for p, m in zip(model.parameters(), marker, strict=True):
        p.grad = m.clone()
    got = FN.saliency_map(model, x, y, loss=loss, reduce=reduce)
    for p, m in zip(model.parameters(), marker, strict=True):
        assert torch.equal(p.grad, m)
    for p in model.parameters():
        p.grad = None
    expected = _reference_saliency(model, x, y, loss, reduce)
    assert got.shape == (4, 9, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_blur_taps_are_the_contract():
    impulse = torch.zeros(1, 9, 9)
    impulse[0, 4, 4] = 1.0
    blurred = FN.blur_maps(impulse)
    taps = torch.tensor([0.05449, 0.24420, 0.40262, 0.24420, 0.05449])
    torch.testing.assert_close(blurred[0, 4, 2:7], taps * taps[2], atol=1e-5, rtol=0)


def test_saliency_pass_keeps_weighted_clean_gradient():
    torch.manual_seed(1)
    model = _TinyNet()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    result = FN.saliency_pass(model, x, y, loss="cross_entropy", param_grad_weight=0.3)
    grads = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    expected = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, 0.3 * want)
    assert result.loss.ndim == 0


def test_saliency_bad_arguments():
    model = _TinyNet()
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="loss must be one of"):
        FN.saliency_map(model, x, y, loss="mse")
    with pytest.raises(ValueError, match="reduce must be one of"):
        FN.saliency_map(model, x, y, reduce="max")
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        FN.saliency_map(model, x, y, blur_kernel=4)
    with pytest.raises(ValueError, match="target labels must lie"):
        FN.saliency_map(model, x, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="blur_kernel=5 needs images larger"):
        FN.saliency_map(model, torch.randn(2, 3, 2, 8), y)


def test_cpu_chunk_budget_comes_from_the_l2_cache(tmp_path):
    def cache(index: int, level: int, kind: str, size: str) -> None:
        folder = tmp_path / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")

    cache(0, 1, "Data", "48K")
    cache(2, 2, "Unified", "2048K")
    cache(3, 3, "Unified", "307200K")
    assert _search._cpu_chunk_elements(tmp_path / "cache") == 1 << 18  # two float32 buffers in 2 MB
    assert _search._cpu_chunk_elements(tmp_path / "none") == _search._FALLBACK_CPU_CHUNK_ELEMENTS
