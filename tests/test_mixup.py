"""SageMixup: timm.data.Mixup's contract, SAGE mode, the live model in the loop and its gradients."""

from __future__ import annotations

import copy
import inspect
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.utils import ModelEmaV3, NativeScaler
from torch import nn

from timm_sage import SageMixup, functional, unwrap_model
from timm_sage.core.clean import CleanGradientLostWarning

NUM_CLASSES = 10


class TinyNet(nn.Module):
    """Conv-BN-ReLU x2, global pool, linear head: (B, 3, H, W) -> (B, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet().train()


def make_batch(batch: int = 8, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    return x, y


def clean_param_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """d/dparams of the reference clean loss, BCE(softmax(f(x)), onehot(y)), by hand."""
    reference = copy.deepcopy(model)
    logits = reference(x)
    loss = F.binary_cross_entropy(torch.softmax(logits, -1), F.one_hot(y, NUM_CLASSES).float())
    return list(torch.autograd.grad(loss, list(reference.parameters())))


# -- timm's interface ------------------------------------------------------------------------------
def test_signature_matches_timm_mixup():
    ours = list(inspect.signature(SageMixup.__init__).parameters.values())[1:]
    theirs = list(inspect.signature(Mixup.__init__).parameters.values())[1:]
    assert [p.name for p in ours[: len(theirs)]] == [p.name for p in theirs]
    for mine, timm_param in zip(ours[: len(theirs)], theirs, strict=True):
        assert mine.default == timm_param.default, mine.name
        assert mine.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,), mine.name
    # every SAGE option is keyword-only, so timm's positional calls keep their meaning
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs) :])


@pytest.mark.parametrize(
    "mode, mixup_alpha, cutmix_alpha, cutmix_minmax",
    [
        ("batch", 1.0, 0.0, None),
        ("batch", 0.0, 1.0, None),
        ("batch", 0.8, 1.0, None),
        ("batch", 0.0, 0.0, (0.3, 0.8)),
        ("pair", 0.8, 1.0, None),
        ("elem", 0.8, 1.0, None),
    ],
)
def test_non_sage_modes_are_timm_exactly(mode, mixup_alpha, cutmix_alpha, cutmix_minmax):
    kwargs = dict(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        cutmix_minmax=cutmix_minmax,
        switch_prob=0.5,
        mode=mode,
        label_smoothing=0.1,
        num_classes=NUM_CLASSES,
    )
    timm_mixer, ours = Mixup(**kwargs), SageMixup(**kwargs)
    for seed in range(6):
        x, y = make_batch(seed=seed)
        np.random.seed(seed)
        want_x, want_t = timm_mixer(x.clone(), y)
        np.random.seed(seed)
        got_x, got_t = ours(x.clone(), y)
        assert torch.equal(got_x, want_x)
        assert torch.equal(got_t, want_t)
        assert got_t.dtype == want_t.dtype and got_t.shape == (8, NUM_CLASSES)


@pytest.mark.parametrize("mode", ["batch", "sage"])
def test_mixup_disabled_leaves_x_and_gives_smoothed_one_hot(mode):
    model = make_model()
    mixer = SageMixup(mode=mode, label_smoothing=0.2, num_classes=NUM_CLASSES, model=model, seed=0)
    mixer.mixup_enabled = False
    x, y = make_batch()
    original = x.clone()
    out_x, out_t = mixer(x, y)
    assert torch.equal(out_x, original)
    assert torch.equal(out_t, mixup_target(y, NUM_CLASSES, 1.0, 0.2))
    assert all(p.grad is None for p in model.parameters())


# -- SAGE mode ---------------------------------------------------------------------------------------
def test_sage_odd_batch_and_soft_targets(monkeypatch):
    priors = []
    draw = SageMixup.draw_sage_params

    def spy(self, batch, height, width, rng=None):
        params = draw(self, batch, height, width, rng)
        priors.append(params.prior)
        return params

    monkeypatch.setattr(SageMixup, "draw_sage_params", spy)
    model = make_model()
    mixer = SageMixup(mode="sage", label_smoothing=0.1, num_classes=NUM_CLASSES, model=model, seed=3)
    x, y = make_batch(batch=7)
    out_x, out_t = mixer(x, y)
    record = mixer.last
    assert record.method == "sage"
    assert out_x.shape == x.shape and out_x.dtype == x.dtype
    assert out_t.shape == (7, NUM_CLASSES)
    assert torch.allclose(out_t.sum(1), torch.ones(7))
    assert sorted(record.perm.tolist()) == list(range(7))
    lam = record.lam
    assert lam.shape == (7,) and bool(((lam >= 0) & (lam <= 1)).all())
    smooth = mixup_target(y, NUM_CLASSES, 1.0, 0.1)
    want = lam[:, None] * smooth + (1 - lam[:, None]) * smooth[record.perm]
    assert torch.allclose(out_t, want, atol=1e-6)
    # the mixed images are exactly SAGE's mix with the recorded draws
    mask = functional.mixing_mask(
        record.saliency, perm=record.perm, prior=priors[-1], translation=record.translation
    )
    assert torch.allclose(mask.mean((1, 2)), lam, atol=1e-6)
    partner = torch.zeros_like(x)  # the partner slid by its translation, zero where uncovered
    for b in range(7):
        dy, dx = record.translation[b].tolist()
        src = x[record.perm[b]]
        h, w = x.shape[-2:]
        partner[b, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = src[
            :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
    want_x = mask[:, None] * x + (1 - mask[:, None]) * partner
    assert torch.allclose(out_x, want_x, atol=1e-5)


def test_switch_prob_chooses_cutmix_or_sage():
    model = make_model()
    x, y = make_batch()
    methods = []
    mixer = SageMixup(
        mode="sage",
        mixup_alpha=1.0,
        cutmix_alpha=1.0,
        switch_prob=0.5,
        num_classes=NUM_CLASSES,
        label_smoothing=0.0,
        model=model,
        seed=5,
    )
    for _ in range(30):
        out_x, out_t = mixer(x.clone(), y)
        record = mixer.last
        methods.append(record.method)
        if record.method == "cutmix":
            # every pixel comes from the image or from the flipped batch; lam is the image's share
            from_self = (out_x == x).all(1)
            from_flip = (out_x == x.flip(0)).all(1)
            assert bool((from_self | from_flip).all())
            assert torch.equal(record.perm, torch.arange(7, -1, -1))
            share = from_self[0].float().mean()
            assert abs(float(record.lam[0]) - float(share)) < 1e-6 or bool((x[0] == x[7]).all())
            one_hot = F.one_hot(y, NUM_CLASSES).float()
            lam = record.lam[:, None]
            assert torch.allclose(out_t, lam * one_hot + (1 - lam) * one_hot.flip(0))
    assert 5 <= methods.count("cutmix") <= 25 and methods.count("sage") == 30 - methods.count("cutmix")
    for prob, only in ((1.0, "cutmix"), (0.0, "sage")):
        mixer = SageMixup(
            mode="sage", cutmix_alpha=1.0, switch_prob=prob, num_classes=NUM_CLASSES, model=model, seed=1
        )
        for _ in range(5):
            mixer(x.clone(), y)
            assert mixer.last.method == only


def test_same_seed_same_mix_different_seed_different_mix():
    model = make_model()
    x, y = make_batch()
    runs = []
    for seed in (11, 11, 12):
        mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=seed)
        runs.append([mixer(x, y) for _ in range(3)])
    for (a_x, a_t), (b_x, b_t) in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a_x, b_x) and torch.equal(a_t, b_t)
    assert any(not torch.equal(a[0], c[0]) for a, c in zip(runs[0], runs[2], strict=True))
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    out_a = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, generator=gen_a)(x, y)
    out_b = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, generator=gen_b)(x, y)
    assert torch.equal(out_a[0], out_b[0])


def test_saliency_comes_from_the_current_weights():
    model = make_model()
    x, y = make_batch()
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=0)
    mixer(x, y)
    first = mixer.last.saliency.clone()
    assert torch.allclose(first, functional.saliency_map(copy.deepcopy(model), x, y), atol=1e-6)
    with torch.no_grad():  # an optimizer step, in effect
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    mixer(x, y)
    second = mixer.last.saliency
    assert not torch.allclose(first, second, atol=1e-4)
    assert torch.allclose(second, functional.saliency_map(copy.deepcopy(model), x, y), atol=1e-6)


# -- gradients -----------------------------------------------------------------------------------------
def test_update_ratio_one_writes_no_gradient():
    model = make_model()
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=0, update_ratio=1.0)
    x, y = make_batch()
    mixer(x, y)
    assert mixer.last.method == "sage"
    assert all(p.grad is None for p in model.parameters())
    assert type(mixer.loss_weight) is torch.Tensor and float(mixer.loss_weight) == 1.0  # carries nothing


def mixed_param_grads(model: nn.Module, images: torch.Tensor, soft: torch.Tensor) -> list[torch.Tensor]:
    """d/dparams of the soft-target cross-entropy on the mixed batch, by hand, on a copy."""
    reference = copy.deepcopy(model)
    loss = torch.sum(-soft * F.log_softmax(reference(images), -1), -1).mean()
    return list(torch.autograd.grad(loss, list(reference.parameters())))


@pytest.mark.parametrize("ratio", [0.7, 0.5])
def test_update_ratio_clean_gradient_enters_through_the_weighted_backward(ratio):
    model = make_model()
    x, y = make_batch()
    expected = clean_param_grads(model, x, y)
    # gradients already in .grad (e.g. from earlier accumulation) must be kept and added to
    existing = [torch.randn_like(p) for p in model.parameters()]
    for param, grad in zip(model.parameters(), existing, strict=True):
        param.grad = grad.clone()
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=0, update_ratio=ratio)
    assert mixer.clean_grad_weight == pytest.approx(1 - ratio)
    images, soft = mixer(x, y)
    for param, before in zip(model.parameters(), existing, strict=True):
        assert torch.equal(param.grad, before)  # the call itself writes nothing
    assert float(mixer.loss_weight) == pytest.approx(ratio)  # the caller's mixed loss takes r ...
    mixed = mixed_param_grads(model, images, soft)
    loss = torch.sum(-soft * F.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
    loss.backward()
    # ... and its backward adds the clean part with weight 1 - r: the paper's (1 - r) l_clean + r l_mixed
    for param, before, clean, mix in zip(model.parameters(), existing, expected, mixed, strict=True):
        assert torch.allclose(param.grad, before + (1 - ratio) * clean + ratio * mix, atol=1e-6, rtol=1e-5)


def test_update_ratio_with_grad_scaler_scales_clean_gradient():
    """The GradScaler's scale reaches the clean term through the scaled backward; unscale_ undoes both."""
    model = make_model()
    x, y = make_batch()
    expected = clean_param_grads(model, x, y)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=0, update_ratio=0.7)
    images, soft = mixer(x, y)
    mixed = mixed_param_grads(model, images, soft)
    loss = torch.sum(-soft * F.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
    scaler.scale(loss).backward()
    for param, clean, mix in zip(model.parameters(), expected, mixed, strict=True):
        assert torch.allclose(param.grad, 1024.0 * (0.3 * clean + 0.7 * mix), atol=1e-4, rtol=1e-5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.unscale_(optimizer)
    for param, clean, mix in zip(model.parameters(), expected, mixed, strict=True):
        assert torch.allclose(param.grad, 0.3 * clean + 0.7 * mix, atol=1e-6, rtol=1e-5)


def test_update_ratio_with_timm_native_scaler_scales_clean_gradient():
    model = make_model()
    x, y = make_batch()
    expected = clean_param_grads(model, x, y)
    scaler = NativeScaler(device="cpu")
    assert float(scaler._scaler.get_scale()) > 1
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, seed=0, update_ratio=0.5).bind(model)
    images, soft = mixer(x, y)
    mixed = mixed_param_grads(model, images, soft)
    # timm's step: scaled backward, unscale (inside the scaler's step), step with lr 0: .grad is unscaled
    loss = torch.sum(-soft * F.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
    scaler(loss, torch.optim.SGD(model.parameters(), lr=0.0))
    for param, clean, mix in zip(model.parameters(), expected, mixed, strict=True):
        assert torch.allclose(param.grad, 0.5 * clean + 0.5 * mix, atol=1e-6, rtol=1e-4)


def test_grad_scaler_argument_is_deprecated():
    scaler = torch.amp.GradScaler("cpu")
    with pytest.warns(DeprecationWarning, match="grad_scaler is deprecated"):
        SageMixup(mode="sage", num_classes=NUM_CLASSES, update_ratio=0.5, grad_scaler=scaler)
    with pytest.warns(DeprecationWarning, match="grad_scaler is deprecated"):
        SageMixup(mode="sage", num_classes=NUM_CLASSES).bind(make_model(), grad_scaler=NativeScaler("cpu"))


def test_bad_grad_scaler_is_a_type_error():
    with pytest.raises(TypeError, match="grad_scaler"):
        SageMixup(mode="sage", num_classes=NUM_CLASSES, update_ratio=0.5, grad_scaler=object())


# -- wrappers, precision, memory format ------------------------------------------------------------------
def test_unwraps_data_parallel_compile_and_ema_by_type():
    model = make_model()
    assert SageMixup(mode="sage", num_classes=NUM_CLASSES, model=nn.DataParallel(model)).model is model
    compiled = torch.compile(model)  # lazy: nothing compiles until it is called
    assert SageMixup(mode="sage", num_classes=NUM_CLASSES, model=compiled).model is model
    assert unwrap_model(nn.DataParallel(torch.compile(nn.DataParallel(model)))) is model
    ema = ModelEmaV3(model, decay=0.9)
    assert SageMixup(mode="sage", num_classes=NUM_CLASSES, model=ema).model is ema.module
    # the saliency pass runs the eager module: the compiled wrapper is never called
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=nn.DataParallel(compiled), seed=0)
    x, y = make_batch()
    mixer(x, y)
    assert torch.allclose(mixer.last.saliency, functional.saliency_map(copy.deepcopy(model), x, y), atol=1e-6)


def test_a_model_owning_a_submodule_called_module_is_not_unwrapped():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten())
            self.fc = nn.Linear(32, NUM_CLASSES)
            self.ema = nn.Identity()  # an attribute called ema is no wrapper either

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.module(x))

    net = Net()
    assert unwrap_model(net) is net
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=net, seed=0)
    assert mixer.model is net
    x, y = make_batch()
    mixer(x, y)  # the whole network (logits), not the feature extractor, gives the saliency
    assert torch.allclose(mixer.last.saliency, functional.saliency_map(net, x, y), atol=1e-6)


def test_real_ddp_single_process(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group already running in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = make_model()
        reference = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)
        mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=ddp, seed=0, update_ratio=0.5)
        assert mixer.model is model
        x, y = make_batch()
        for _ in range(2):  # two steps: the reducer must accept the extra backward each time
            mixed_x, soft = mixer(x, y)
            loss = torch.sum(-soft * F.log_softmax(ddp(mixed_x), -1), -1).mean() * mixer.loss_weight
            loss.backward()
            # reference: 0.5 clean grad + 0.5 mixed grad (r = 0.5), computed on a plain copy
            clean = clean_param_grads(reference, x, y)
            ref_loss = torch.sum(-soft * F.log_softmax(reference(mixed_x), -1), -1).mean()
            mixed = torch.autograd.grad(ref_loss, list(reference.parameters()))
            for param, a, b in zip(model.parameters(), clean, mixed, strict=True):
                assert torch.allclose(param.grad, 0.5 * a + 0.5 * b, atol=1e-5)
            for param in model.parameters():
                param.grad = None
    finally:
        dist.destroy_process_group()


def test_amp_dtype_bfloat16_on_cpu():
    model = make_model()
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=0, amp_dtype=torch.bfloat16)
    x, y = make_batch()
    out_x, out_t = mixer(x, y)
    assert mixer.last.method == "sage"
    assert out_x.dtype == torch.float32 and out_t.dtype == torch.float32
    saliency = mixer.last.saliency
    assert bool(torch.isfinite(saliency).all()) and float(saliency.sum()) > 0
    # close to the float32 map, not identical (it ran in bfloat16)
    full = functional.saliency_map(copy.deepcopy(model), x, y)
    cosine = F.cosine_similarity(saliency.float().flatten(), full.flatten(), dim=0)
    assert float(cosine) > 0.9


def test_amp_saliency_map_is_float32():
    model = make_model()
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=0, amp_dtype=torch.bfloat16)
    mixer(*make_batch())
    assert mixer.last.saliency.dtype == torch.float32


def test_channels_last_model_and_input():
    model = make_model().to(memory_format=torch.channels_last)
    x, y = make_batch()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=0)
    out_x, _ = mixer(x_cl, y)
    assert out_x.is_contiguous(memory_format=torch.channels_last)
    plain = functional.saliency_map(copy.deepcopy(model).to(memory_format=torch.contiguous_format), x, y)
    assert torch.allclose(mixer.last.saliency, plain, atol=1e-5)
    # a contiguous input to a channels_last model works too
    mixer(x, y)
    assert mixer.last.method == "sage"


def test_sage_mode_needs_a_model_or_saliency():
    mixer = SageMixup(mode="sage", num_classes=NUM_CLASSES, seed=0)
    x, y = make_batch()
    with pytest.raises(ValueError, match="model"):
        mixer(x, y)
    saliency = torch.rand(8, 16, 16)
    out_x, out_t = mixer(x, y, saliency=saliency)
    assert mixer.last.method == "sage" and torch.equal(mixer.last.saliency, saliency)
    with pytest.raises(ValueError, match="mode"):
        SageMixup(mode="saliency")
    with pytest.raises(ValueError, match="mixup_alpha"):
        SageMixup(mode="sage", mixup_alpha=0.0, cutmix_alpha=1.0)


def test_one_line_switch_trains_a_timm_model_in_a_plain_loop():
    """A loop written for timm's Mixup switches to SAGE by changing the line that builds the mixer (and,
    with ``update_ratio < 1``, weighting the loss by ``mixer.loss_weight``): no clean term is lost."""
    import timm
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=NUM_CLASSES).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = SoftTargetCrossEntropy()
    args = dict(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES)
    mixer = SageMixup(**args, mode="sage", model=model, seed=0, update_ratio=0.7)  # was: Mixup(**args)
    before = copy.deepcopy(model.state_dict())
    methods = []
    optimizer.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CleanGradientLostWarning)
        for step in range(4):
            x, y = make_batch(batch=8, size=16, seed=step)
            x, soft = mixer(x, y)
            methods.append(mixer.last.method)
            loss = criterion(model(x), soft) * mixer.loss_weight
            assert math.isfinite(float(loss.detach()))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        mixer(*make_batch(batch=8, size=16, seed=4))
    assert "sage" in methods and set(methods) <= {"sage", "cutmix"}
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
