"""Hostile input: every call either returns finite, correctly shaped output or raises ValueError/TypeError.

Each hypothesis case knows whether it is valid: valid cases must succeed (finite images, lam in [0, 1],
rows of targets summing to 1), invalid ones must raise ValueError or TypeError, never anything else.
Runs derandomised (the same examples in every CI run) with no example database.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from timm_sage import SageMixup, functional, sage_target

FUZZ = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_MODEL = settings(FUZZ, max_examples=100)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SIDE = st.integers(1, 6)  # image height / width: small keeps 500 examples fast
BAD_IMAGE_DTYPES = [torch.int64, torch.uint8, torch.bool]
GOOD_SALIENCY = ["random", "zeros", "denormal", "huge", "extremes", "one_pixel", "with_channel"]
BAD_SALIENCY = ["nan", "inf", "neg_inf", "negative", "wrong_shape", "integer"]
BAD_PERM = ["duplicate", "short", "floating", "out_of_range", "negative", "two_dim", "list"]
BAD_PRIOR = [-0.1, 1.5, float("nan"), float("inf"), "0.5", True, "nan_tensor", "wrong_shape_tensor"]
BAD_TRANSLATIONS = ["out_of_range", "empty", "floating", "wrong_shape", "boolean"]


@dataclass
class Case:
    """One sage_mix call: its arguments and whether it is valid."""

    x: torch.Tensor
    saliency: object
    perm: object
    prior: object
    translations: object
    search_size: object
    valid: bool


def _saliency(kind: str, batch: int, height: int, width: int, dtype: torch.dtype, gen: torch.Generator):
    """(B, H, W) maps of ``dtype``: good kinds (zeros, subnormals, the dtype's max...) or bad ones."""
    info, top = torch.finfo(dtype), min(torch.finfo(dtype).max, torch.finfo(torch.float32).max)
    base = torch.rand(batch, height, width, generator=gen)
    spot = tuple(int(torch.randint(n, (1,), generator=gen)) for n in (batch, height, width))
    poke = {"nan": float("nan"), "inf": float("inf"), "neg_inf": -float("inf"), "negative": -1e-3}
    if kind in poke or kind == "one_pixel":
        maps = base.to(dtype) if kind in poke else torch.zeros(batch, height, width, dtype=dtype)
        maps[spot] = poke.get(kind, 1.0)
        return maps
    variants = {
        "zeros": lambda: torch.zeros(batch, height, width, dtype=dtype),
        "denormal": lambda: torch.where(base > 0.3, info.tiny / 4, 0.0).to(dtype),  # the dtype's subnormals
        "huge": lambda: (base * 0.5 + 0.5).to(dtype) * top,
        "extremes": lambda: torch.where(base > 0.5, top, info.tiny / 4).to(dtype),
        "with_channel": lambda: base.to(dtype)[:, None],
        "wrong_shape": lambda: base.to(dtype)[:, :, :-1] if width > 1 else base.to(dtype).repeat(2, 1, 1),
        "integer": lambda: (base * 10).long(),
        "not_tensor": lambda: base.tolist(),
        "random": lambda: base.to(dtype),
    }
    return variants[kind]()


def _perm(kind: str, batch: int, gen: torch.Generator):
    perm = torch.randperm(batch, generator=gen)
    duplicate = torch.zeros(batch, dtype=torch.long) if batch > 1 else torch.tensor([1])
    return {
        "int64": perm,
        "int32": perm.int(),
        "duplicate": duplicate,
        "short": perm[:-1],
        "floating": perm.float(),
        "out_of_range": perm + 1,
        "negative": perm - batch,
        "two_dim": perm[None],
        "list": perm.tolist(),
    }[kind]


def _prior(kind, batch: int, gen: torch.Generator):
    with_nan = torch.rand(batch, generator=gen)
    with_nan[-1] = float("nan")
    variants = {
        "float": float(torch.rand((), generator=gen)),
        "tensor": torch.rand(batch, generator=gen),
        "scalar_tensor": torch.rand((), generator=gen),
        "edge": float(torch.rand((), generator=gen) > 0.5),
        "nan_tensor": with_nan,
        "wrong_shape_tensor": torch.rand(batch + 1, generator=gen),
    }
    return variants.get(kind, kind) if isinstance(kind, str) else kind  # else a bad literal: -0.1, nan, True


def _translations(kind: str, height: int, width: int, gen: torch.Generator):
    good = functional.sample_translations(height, width, 0.3, generator=gen)
    beyond = torch.cat([good, torch.tensor([[height, 0]])])
    return {
        "int64": good,
        "int32": good.int(),
        "out_of_range": beyond,
        "empty": good[:0],
        "floating": good.float(),
        "wrong_shape": torch.cat([good, good[:, :1]], dim=1),
        "boolean": good != 0,
    }[kind]


@st.composite
def sage_mix_cases(draw, devices: tuple[str, ...] = tuple(DEVICES)) -> Case:
    batch = draw(st.integers(1, 257))
    height, width, channels = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # Mostly one bad argument at a time, so that every check is reached; sometimes all good.
    bad = draw(st.sampled_from(["none", "none", "x", "saliency", "perm", "prior", "translations", "size"]))
    x_dtype = draw(st.sampled_from(BAD_IMAGE_DTYPES if bad == "x" else FLOAT_DTYPES[:3]))
    x = (torch.randn(batch, channels, height, width, generator=gen) * 3).to(x_dtype)
    s_dtype = draw(st.sampled_from(FLOAT_DTYPES))
    s_kind = draw(st.sampled_from(BAD_SALIENCY if bad == "saliency" else GOOD_SALIENCY))
    if s_dtype == torch.float64 and s_kind in ("huge", "extremes"):
        s_dtype = torch.float32
    p_kind = draw(st.sampled_from(BAD_PERM if bad == "perm" else ["int64", "int32"]))
    p_kind = "out_of_range" if p_kind == "duplicate" and batch == 1 else p_kind
    good_priors = ["float", "tensor", "scalar_tensor", "edge"]
    prior_kind = draw(st.sampled_from(BAD_PRIOR if bad == "prior" else good_priors))
    t_kind = draw(st.sampled_from(BAD_TRANSLATIONS if bad == "translations" else ["int64", "int32"]))
    search_size = draw(st.sampled_from([0, -2, 2.5, "4"] if bad == "size" else [None, None, 1, 2, 3, 8]))
    return Case(
        x.to(draw(st.sampled_from(devices))),
        _saliency(s_kind, batch, height, width, s_dtype, gen),
        _perm(p_kind, batch, gen),
        _prior(prior_kind, batch, gen),
        _translations(t_kind, height, width, gen),
        search_size,
        valid=bad == "none",
    )


def _check_mix_output(out: functional.SageMixOutput, x: torch.Tensor, translations: torch.Tensor) -> None:
    batch, _, height, width = x.shape
    assert out.images.shape == x.shape and out.images.dtype == x.dtype and out.images.device == x.device
    assert out.lam.shape == (batch,) and out.translation.shape == (batch, 2)
    assert torch.isfinite(out.images).all(), "non-finite mixed images"
    assert torch.isfinite(out.lam).all() and bool(((out.lam >= 0) & (out.lam <= 1)).all())
    assert bool((out.translation[:, 0].abs() < height).all() & (out.translation[:, 1].abs() < width).all())
    assert {tuple(t) for t in out.translation.tolist()} <= {tuple(t) for t in translations.long().tolist()}


@FUZZ
@given(sage_mix_cases())
def test_fuzz_sage_mix(case: Case) -> None:
    _run_mix_case(case)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@settings(FUZZ, max_examples=150)
@given(sage_mix_cases(devices=("cuda",)))
def test_fuzz_sage_mix_on_cuda(case: Case) -> None:
    _run_mix_case(case)


def _run_mix_case(case: Case) -> None:
    call = dict(
        saliency=case.saliency,
        perm=case.perm,
        prior=case.prior,
        translations=case.translations,
        search_size=case.search_size,
    )
    if not case.valid:
        with pytest.raises((ValueError, TypeError)):
            functional.sage_mix(case.x, **call)
        return
    _check_mix_output(functional.sage_mix(case.x, **call), case.x, case.translations)


@st.composite
def label_cases(draw, batch: int):
    """(labels, num_classes, valid) for a batch: integer or soft labels, some out of range."""
    num_classes = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["int", "int", "soft", "too_big", "negative", "soft_wrong_width", "3d"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    if kind == "too_big":
        labels[-1] = num_classes
    elif kind == "negative":
        labels[0] = -1
    elif kind == "soft":  # rows that do not sum to 1 (finite, non-negative) are used as given
        labels = torch.rand(batch, num_classes, generator=gen) * draw(st.sampled_from([0.0, 0.3, 7.0]))
    elif kind == "soft_wrong_width":
        labels = torch.rand(batch, num_classes + 1, generator=gen)
    elif kind == "3d":
        labels = labels[:, None, None]
    return labels, num_classes, kind in ("int", "soft")


def _check_targets(target: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    assert target.shape == (labels.shape[0], num_classes) and torch.isfinite(target).all()
    if not labels.is_floating_point():
        assert torch.allclose(target.sum(1), torch.ones(labels.shape[0]), atol=1e-5)
        assert bool((target >= 0).all())


@FUZZ
@given(data=st.data())
def test_fuzz_sage_mixup_with_given_saliency(data: st.DataObject) -> None:
    batch, height, width = data.draw(st.integers(1, 257)), data.draw(SIDE), data.draw(SIDE)
    labels, num_classes, labels_ok = data.draw(label_cases(batch))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x_dtype = data.draw(st.sampled_from(FLOAT_DTYPES[:3] + [torch.uint8]))
    x = (torch.randn(batch, 3, height, width, generator=gen) * 2).to(x_dtype)
    s_kind = data.draw(st.sampled_from(GOOD_SALIENCY + ["nan", "inf", "negative", "wrong_shape"]))
    saliency = _saliency(s_kind, batch, height, width, data.draw(st.sampled_from(FLOAT_DTYPES[:3])), gen)
    mixer = SageMixup(
        mode="sage",
        num_classes=num_classes,
        seed=data.draw(st.integers(0, 100)),
        label_smoothing=data.draw(st.sampled_from([0.0, 0.1, 1.0])),
        cutmix_alpha=data.draw(st.sampled_from([0.0, 1.0])),
        rand_pos=data.draw(st.sampled_from([0.01, 0.5, 1.0])),
        search_size=data.draw(st.sampled_from([None, 2])),
    )
    valid = labels_ok and x_dtype.is_floating_point and s_kind in GOOD_SALIENCY
    try:
        images, target = mixer(x, labels, saliency=saliency)
    except (ValueError, TypeError):
        assert not valid, "a valid call raised"
        return
    # CutMix (picked by switch_prob) does not read the saliency, so a bad map may then go unnoticed.
    only_saliency_bad = labels_ok and x_dtype.is_floating_point
    assert valid or (only_saliency_bad and mixer.last.method == "cutmix"), "an invalid call did not raise"
    assert images.shape == x.shape and images.dtype == x.dtype and torch.isfinite(images).all()
    assert mixer.last.method in ("sage", "cutmix")
    _check_targets(target, labels, num_classes)


class _TinyNet(nn.Module):
    """(B, 3, H, W) -> (B, num_classes); ``poison`` makes the first forward return NaN logits."""

    def __init__(self, num_classes: int, poison: bool = False) -> None:
        super().__init__()
        self.conv, self.head, self.poison = nn.Conv2d(3, 4, 1), nn.Linear(4, num_classes), poison

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(torch.tanh(self.conv(x)).mean((2, 3)))
        if self.poison:
            self.poison = False
            return logits * float("nan")
        return logits


@FUZZ_MODEL
@given(data=st.data())
def test_fuzz_sage_mixup_with_bound_model(data: st.DataObject) -> None:
    batch, height, width = data.draw(st.integers(1, 257)), data.draw(SIDE), data.draw(SIDE)
    labels, num_classes, labels_ok = data.draw(label_cases(batch))
    blur_kernel = data.draw(st.sampled_from([1, 3, 5]))
    saliency_loss = data.draw(st.sampled_from(["bce_softmax", "cross_entropy"]))
    # bce_softmax needs soft targets in [0, 1]; above 1 it must raise ValueError naming target.
    labels_ok = labels_ok and not (
        saliency_loss == "bce_softmax" and labels.is_floating_point() and bool((labels > 1).any())
    )
    poison = data.draw(st.booleans())
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    model = _TinyNet(num_classes, poison=poison)
    mixer = SageMixup(
        mode="sage",
        model=model,
        num_classes=num_classes,
        seed=0,
        blur_kernel=blur_kernel,
        update_ratio=data.draw(st.sampled_from([1.0, 0.5])),
        rand_pos=0.2,
        saliency_loss=saliency_loss,
        saliency_reduce=data.draw(st.sampled_from(["mean_abs", "l2"])),
    )
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
    blur_ok = blur_kernel // 2 < min(height, width)  # reflect padding, checked before the pass
    if not labels_ok or not blur_ok:
        with pytest.raises((ValueError, TypeError)):
            mixer(x, labels)
        return
    images, target = mixer(x, labels)
    assert images.shape == x.shape and torch.isfinite(images).all()
    _check_targets(target, labels, num_classes)
    assert int(mixer.skipped_batches) == int(poison) and bool(mixer.last.mixed) == (not poison)
    if poison:
        assert torch.equal(images, x) and float(mixer.loss_weight) == 1.0
        assert all(p.grad is None or not p.grad.any() for p in model.parameters()), "a NaN pass reached .grad"
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@FUZZ_MODEL
@given(data=st.data())
def test_fuzz_v2_transform(data: st.DataObject) -> None:
    transforms = pytest.importorskip("timm_sage.transforms")
    batch, height, width = data.draw(st.integers(1, 257)), data.draw(SIDE), data.draw(SIDE)
    labels, num_classes, labels_ok = data.draw(label_cases(batch))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x_dtype = data.draw(st.sampled_from(FLOAT_DTYPES[:3] + [torch.uint8]))
    x = (torch.rand(batch, 3, height, width, generator=gen) * 255).to(x_dtype)
    s_kind = data.draw(st.sampled_from(GOOD_SALIENCY + ["nan", "inf", "negative", "wrong_shape", "integer"]))
    saliency = _saliency(s_kind, batch, height, width, data.draw(st.sampled_from(FLOAT_DTYPES[:3])), gen)
    sage = transforms.SAGE(num_classes=num_classes, seed=0, rand_pos=data.draw(st.sampled_from([0.05, 1.0])))
    if not (labels_ok and s_kind in GOOD_SALIENCY):
        with pytest.raises((ValueError, TypeError)):
            sage(x, labels, saliency)
        return
    images, target, _ = sage(x, labels, saliency)
    assert images.shape == x.shape and images.dtype == x.dtype
    assert not images.is_floating_point() or torch.isfinite(images).all()
    _check_targets(target.float(), labels, num_classes)


# -- training-level faults in the saliency pass ------------------------------------------------------------
@pytest.mark.parametrize("saliency_loss", ["cross_entropy", "bce_softmax"])
@pytest.mark.parametrize("update_ratio", [1.0, 0.5])
def test_nan_saliency_pass_skips_mixing_without_poisoning_grads(
    update_ratio: float, saliency_loss: str
) -> None:
    torch.manual_seed(0)
    model = _TinyNet(4, poison=True)
    mixer = SageMixup(
        mode="sage",
        model=model,
        num_classes=4,
        seed=1,
        update_ratio=update_ratio,
        saliency_loss=saliency_loss,
    )
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    images, target = mixer(x, y)  # decided on the device: no warning, no host read
    assert int(mixer.skipped_batches) == 1 and not bool(mixer.last.mixed)
    assert torch.equal(images, x) and torch.equal(
        target, sage_target(y, perm=torch.arange(6), lam=1.0, num_classes=4, label_smoothing=0.1)
    )
    assert float(mixer.loss_weight) == 1.0  # the caller trains on the plain batch with full weight
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # nothing of the NaN pass
    # The step goes on with the clean batch: finite gradients (the weight carries a zero clean term), and
    # the next batch is mixed again.
    want = torch.autograd.grad(
        torch.sum(-target * torch.log_softmax(model(images), -1), -1).mean(), list(model.parameters())
    )
    (torch.sum(-target * torch.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    for param, grad in zip(model.parameters(), want, strict=True):
        assert torch.equal(param.grad, grad)
    mixer(x, y)
    assert bool(mixer.last.mixed) and int(mixer.skipped_batches) == 1


class _NanGradNet(nn.Module):
    """Finite logits, but sqrt(|conv(x)|) has a NaN gradient wherever conv(x) == 0 (all-zero images)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sqrt(self.conv(x).abs()).mean((2, 3)))


def test_nan_gradient_with_finite_loss_does_not_poison_grads() -> None:
    torch.manual_seed(0)
    model = _NanGradNet()
    mixer = SageMixup(mode="sage", model=model, num_classes=4, seed=1, update_ratio=0.5)
    x = torch.randn(4, 3, 8, 8)
    x[0] = 0.0
    mixer(x, torch.tensor([0, 1, 2, 3]))
    assert int(mixer.skipped_batches) == 1 and not bool(mixer.last.mixed)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()), "NaN in .grad"


# -- known gaps in the argument checks, each with the fix given to the lead ---------------------------------
def test_bce_saliency_loss_with_soft_targets_above_one() -> None:
    labels = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.5]])  # a soft label that does not sum to 1
    with pytest.raises(ValueError, match="target"):
        functional.saliency_pass(_TinyNet(3), torch.randn(2, 3, 6, 6), labels)


TWO_IMAGE_CALL = dict(perm=torch.tensor([1, 0]), prior=0.5, translations=torch.tensor([[0, 0], [1, -2]]))


@pytest.mark.parametrize("what", ["saliency", "images"])
def test_float64_beyond_float32_range(what: str) -> None:
    x, saliency = torch.randn(2, 2, 5, 5), torch.rand(2, 5, 5)
    if what == "saliency":
        saliency = saliency.double() * 1e300
    else:
        x = x.double() * 1e300
    _check_mix_output(functional.sage_mix(x, saliency, **TWO_IMAGE_CALL), x, TWO_IMAGE_CALL["translations"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_non_finite_or_negative_soft_labels_raise(bad: float) -> None:
    labels = torch.full((2, 3), 1 / 3)
    labels[1, 2] = bad
    with pytest.raises(ValueError, match="target"):
        functional.sage_target(labels, perm=torch.tensor([1, 0]), lam=torch.full((2,), 0.5), num_classes=3)


@pytest.mark.parametrize("bad", ["saliency_list", 0, -4, 2.5, "8"])
def test_bad_saliency_type_and_chunk_elements_raise_naming_them(bad) -> None:
    x, saliency, chunk = torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4), bad
    if bad == "saliency_list":
        saliency, chunk = saliency.tolist(), None
    with pytest.raises((ValueError, TypeError), match="saliency" if chunk is None else "chunk_elements"):
        functional.sage_mix(x, saliency, chunk_elements=chunk, **TWO_IMAGE_CALL)
