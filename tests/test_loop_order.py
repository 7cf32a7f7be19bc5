"""The clean term of ``update_ratio`` reaches the optimizer step whatever the training loop's order.

SAGE trains on ``(1 - r) * l_clean + r * l_mixed`` (docs/algorithm.md). Every loop below is written the
documented way (``loss = criterion(model(x), target) * mixup_fn.loss_weight``), with ``zero_grad()`` in a
different place, with gradient accumulation, a GradScaler under float16 autocast, two DDP ranks, or
steps that do not run SAGE; each must end at the weights of ONE reference computed by hand for the same
random draws: two explicit backward passes, ``(1 - r) * l_clean`` on the clean batch (whose input
gradient is also the saliency) and ``r * l_mixed`` on the batch mixed with the public functional API.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timm_sage import SageMixup, functional
from timm_sage.core.clean import CleanGradientLostWarning, LossWeight
from timm_sage.core.saliency import saliency_loss_scale
from timm_sage.core.step import SageDraws

R = 0.75  # 1 - r = 0.25: a power of two, so weighting the clean gradient rounds nothing away
NUM_CLASSES = 4
BATCH = 8
SIZE = 10
STEPS = 3
SEED = 5
# The weights the loops must reach: rtol 1e-5 (the tolerance), atol for weights near zero.
RTOL, ATOL = 1e-5, 1e-7


def _net() -> nn.Module:
    """(B, 3, 10, 10) -> (B, 4) logits, with BatchNorm (whose running statistics the clean pass updates)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, NUM_CLASSES),
    )  # fmt: skip


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), torch.randint(
        0, NUM_CLASSES, (BATCH,), generator=gen
    )


def _chunks(step: int, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The step's batch in ``parts`` equal chunks: accumulation's micro-batches, the DDP ranks' shards."""
    x, y = _batch(step)
    return list(zip(x.chunk(parts), y.chunk(parts), strict=True))


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


@dataclass
class Record:
    """One mixer call: the method it ran, its random draws (SAGE), and its output (other methods)."""

    method: str
    draws: SageDraws | None
    images: torch.Tensor
    target: torch.Tensor


class RecordingMixer:
    """A SageMixup whose random draws and outputs are recorded; called like the mixer itself."""

    def __init__(self, model: nn.Module, seed: int = SEED, **options) -> None:
        options = {"rand_pos": 0.2, "update_ratio": R, **options}
        self.mixer = SageMixup(
            mode="sage", num_classes=NUM_CLASSES, label_smoothing=0.0, model=model, seed=seed, **options
        )
        self.records: list[Record] = []
        self._drawn: list[SageDraws] = []
        draw = self.mixer.draw_sage_params

        def recorded(*args, **kwargs):
            self._drawn.append(draw(*args, **kwargs))
            return self._drawn[-1]

        self.mixer.draw_sage_params = recorded

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drawn = len(self._drawn)
        images, target = self.mixer(x, y)
        draws = self._drawn[-1] if len(self._drawn) > drawn else None
        self.records.append(Record(self.mixer.last.method, draws, images.detach().clone(), target.clone()))
        return images, target

    @property
    def loss_weight(self):
        return self.mixer.loss_weight


def _fp16_autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.float16) if enabled else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------- the reference
def _reference(
    records: list[list[Record]],
    parts: int = 1,
    *,
    amp: bool = False,
    loss_scales: list[float] | None = None,
    clean: bool = True,
) -> nn.Module:
    """The weights after ``len(records)`` steps, by hand: per step and chunk, the gradient of
    ``(1 - r) / n * l_clean`` on the clean chunk (the same backward's input gradient gives the saliency),
    then the chunk mixed with the recorded draws by ``functional.sage_mix`` and the gradient of
    ``r / n * l_mixed`` added; steps without SAGE train on the mixer's own output with weight 1 / n.
    Each backward runs on its loss scaled by a power of two, undone after: the clean one by the saliency
    pass's ``saliency_loss_scale``, the mixed one by ``loss_scales[step]`` (the loop's GradScaler scale;
    1 without). That changes nothing in float32, but a float16 backward rounds differently at another
    scale wherever its gradients fall below float16's normal range, so the reference scales each
    backward as the loop does. ``amp``: both forwards under float16 autocast. ``clean=False`` drops the
    clean term (the sanity check that it matters)."""
    model = _net()
    optimizer = _optimizer(model)
    params = list(model.parameters())
    for step, step_records in enumerate(records):
        scale = loss_scales[step] if loss_scales is not None else 1.0
        optimizer.zero_grad(set_to_none=True)
        for (x, y), record in zip(_chunks(step, parts), step_records, strict=True):
            weight = 1.0 / parts
            if record.method in ("sage", "cutmix"):  # CutMix batches take the clean term too (0.3.0)
                inputs = x.clone().requires_grad_(True)
                with _fp16_autocast(amp):
                    logits = model(inputs)
                l_clean = F.binary_cross_entropy(
                    torch.softmax(logits.float(), -1), F.one_hot(y, NUM_CLASSES).float()
                )
                # One backward for the input gradient (the saliency) and the parameters', of the loss
                # scaled by the saliency pass's power of two (against float16 underflow), undone after.
                loss_scale = saliency_loss_scale(x.shape[0], NUM_CLASSES, "bce_softmax")
                grad, *grads = torch.autograd.grad(loss_scale * l_clean, [inputs, *params])
                if clean:
                    for param, g in zip(params, grads, strict=True):
                        g = g * ((1 - R) * weight / loss_scale)
                        param.grad = g if param.grad is None else param.grad + g
                if record.method == "sage":
                    saliency = functional.blur_maps((grad.float() / loss_scale).abs().mean(1))
                    draws = record.draws
                    out = functional.sage_mix(
                        x, saliency, perm=draws.perm, prior=draws.prior, translations=draws.translations
                    )
                    images = out.images
                    target = functional.sage_target(
                        y, perm=draws.perm, lam=out.lam, num_classes=NUM_CLASSES
                    )
                else:
                    images, target = record.images, record.target
                weight *= R
            else:
                images, target = record.images, record.target
            with _fp16_autocast(amp):
                logits = model(images)
            grads = torch.autograd.grad(scale * weight * _soft_ce(logits, target), params)
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad / scale if param.grad is None else param.grad + grad / scale
        optimizer.step()
    return model


def _assert_same_weights(model: nn.Module, reference: nn.Module, *, buffers: bool = True) -> None:
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    if buffers:  # BatchNorm's running statistics: the clean pass's forward, then the mixed one
        for (name, got), want in zip(model.named_buffers(), reference.buffers(), strict=True):
            torch.testing.assert_close(
                got, want, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}"
            )


def _max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


# ------------------------------------------------------------------------------------------- the loops
ZERO_GRAD_PLACES = ("top", "after_step", "after_mixer", "before_backward")


def _train(
    place: str, set_to_none: bool, steps: int = STEPS, **options
) -> tuple[nn.Module, list[list[Record]]]:
    """``steps`` steps of the documented loop with ``optimizer.zero_grad(set_to_none)`` at ``place``:
    the top of the loop, after ``step()`` (timm's train.py), right after the mixer call, or between the
    loss and ``backward()`` (DeiT's engine.py)."""
    model = _net()
    optimizer = _optimizer(model)
    mixup_fn = RecordingMixer(model, **options)
    for step in range(steps):
        x, y = _batch(step)
        if place == "top":
            optimizer.zero_grad(set_to_none=set_to_none)
        mixed, target = mixup_fn(x, y)
        if place == "after_mixer":
            optimizer.zero_grad(set_to_none=set_to_none)
        loss = _soft_ce(model(mixed), target) * mixup_fn.loss_weight
        if place == "before_backward":
            optimizer.zero_grad(set_to_none=set_to_none)
        loss.backward()
        optimizer.step()
        if place == "after_step":
            optimizer.zero_grad(set_to_none=set_to_none)
    return model, [[record] for record in mixup_fn.records]


@pytest.mark.parametrize(
    ("place", "set_to_none"),
    [("top", True), ("top", False), ("after_step", True), ("after_mixer", True), ("before_backward", True),
     ("before_backward", False)],
)  # fmt: skip
def test_zero_grad_anywhere_gives_the_reference_weights(place: str, set_to_none: bool) -> None:
    model, records = _train(place, set_to_none)
    assert [r[0].method for r in records] == ["sage"] * STEPS
    reference = _reference(records)
    _assert_same_weights(model, reference)
    # The clean term moves the weights far more than the tolerance: a loop that lost it would fail.
    assert _max_difference(reference, _reference(records, clean=False)) > 1e-3


@pytest.mark.parametrize("zero_grad_after_first_mixer", [False, True])
def test_gradient_accumulation_counts_each_micro_batch_clean_term_once(
    zero_grad_after_first_mixer: bool,
) -> None:
    """Two micro-batches per step, each loss divided by 2 (timm's ``--grad-accum-steps``): each micro-batch's
    clean term enters once, divided like its mixed loss. ``zero_grad`` after the first micro-batch's mixer
    call (DeiT's place) or after ``step()``."""
    model = _net()
    optimizer = _optimizer(model)
    mixup_fn = RecordingMixer(model)
    for step in range(STEPS):
        for micro, (x, y) in enumerate(_chunks(step, 2)):
            mixed, target = mixup_fn(x, y)
            if zero_grad_after_first_mixer and micro == 0:
                optimizer.zero_grad()
            loss = _soft_ce(model(mixed), target) * mixup_fn.loss_weight
            (loss / 2).backward()
        optimizer.step()
        if not zero_grad_after_first_mixer:
            optimizer.zero_grad()
    records = [mixup_fn.records[2 * step : 2 * step + 2] for step in range(STEPS)]
    _assert_same_weights(model, _reference(records, parts=2))


def test_grad_scaler_with_float16_autocast_gives_the_reference_weights() -> None:
    """``torch.amp.GradScaler`` (CPU, its scale doubling every step) with float16 autocast, DeiT's order: the
    clean term is scaled by the loss's scale in the backward and unscaled with the rest."""
    model = _net()
    optimizer = _optimizer(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    mixup_fn = RecordingMixer(model, amp_dtype=torch.float16)
    for step in range(STEPS):
        x, y = _batch(step)
        mixed, target = mixup_fn(x, y)
        with _fp16_autocast(True):
            loss = _soft_ce(model(mixed), target) * mixup_fn.loss_weight
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 2.0 ** (8 + STEPS)  # no step was skipped
    records = [[record] for record in mixup_fn.records]
    scales = [2.0 ** (8 + step) for step in range(STEPS)]
    _assert_same_weights(model, _reference(records, amp=True, loss_scales=scales))


def test_steps_without_sage_add_no_stale_clean_term() -> None:
    """Steps that do not run SAGE, an unmixed batch (``prob`` 0 for that step) and a CutMix batch
    (``switch_prob`` 1), each right after a SAGE step whose term the loop consumed: the unmixed batch
    trains on itself alone with a plain ``loss_weight`` of 1; the CutMix batch takes its own clean term
    (weight r, a fresh clean pass), never the SAGE step's."""
    model = _net()
    optimizer = _optimizer(model)
    mixup_fn = RecordingMixer(model, cutmix_alpha=1.0)
    schedule = [("sage", 1.0, 0.0), ("none", 0.0, 0.0), ("sage", 1.0, 0.0), ("cutmix", 1.0, 1.0)]
    weights = []
    for step, (_, prob, switch_prob) in enumerate(schedule):
        mixup_fn.mixer.mix_prob, mixup_fn.mixer.switch_prob = prob, switch_prob
        x, y = _batch(step)
        mixed, target = mixup_fn(x, y)
        weights.append(mixup_fn.loss_weight)
        optimizer.zero_grad()
        (_soft_ce(model(mixed), target) * mixup_fn.loss_weight).backward()
        optimizer.step()
    methods = [record.method for record in mixup_fn.records]
    assert methods == [method for method, _, _ in schedule]
    for method, weight in zip(methods, weights, strict=True):
        assert isinstance(weight, LossWeight) == (method in ("sage", "cutmix"))
        assert float(weight) == pytest.approx(R if method in ("sage", "cutmix") else 1.0)
    _assert_same_weights(model, _reference([[record] for record in mixup_fn.records]))


def test_clean_term_in_batch_needs_no_clean_gradient() -> None:
    """``clean_term="in_batch"``: the clean term is in the returned batch, ``loss_weight`` is a plain 1 and
    the loop's order does not matter."""
    results = []
    for place in ("top", "before_backward"):
        model = _net()
        optimizer = _optimizer(model)
        mixup_fn = SageMixup(
            mode="sage", num_classes=NUM_CLASSES, label_smoothing=0.0, model=model, seed=SEED, update_ratio=R,
            clean_term="in_batch",
        )  # fmt: skip
        for step in range(STEPS):
            x, y = _batch(step)
            if place == "top":
                optimizer.zero_grad()
            before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
            mixed, target = mixup_fn(x, y)
            assert not isinstance(mixup_fn.loss_weight, LossWeight) and float(mixup_fn.loss_weight) == 1.0
            for param, grad in zip(model.parameters(), before, strict=True):  # the call wrote no gradient
                assert (param.grad is None and grad is None) or torch.equal(param.grad, grad)
            loss = _soft_ce(model(mixed), target) * mixup_fn.loss_weight
            if place == "before_backward":
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append(model)
    _assert_same_weights(*results)


# ------------------------------------------------------------------------------------------- loss_weight
def _weighted_grads(combine) -> list[torch.Tensor]:
    model = _net()
    mixup_fn = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=SEED, update_ratio=R)
    x, y = _batch(0)
    mixed, target = mixup_fn(x, y)
    assert all(p.grad is None for p in model.parameters())  # the call itself writes no gradient
    combine(model(mixed), target, mixup_fn.loss_weight).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_every_spelling_of_the_product_carries_the_clean_term() -> None:
    def inplace(logits, target, weight):
        loss = _soft_ce(logits, target)
        loss *= weight
        return loss

    spellings = {
        "loss * w": lambda logits, target, w: _soft_ce(logits, target) * w,
        "w * loss": lambda logits, target, w: w * _soft_ce(logits, target),
        "torch.mul": lambda logits, target, w: torch.mul(_soft_ce(logits, target), w),
        "Tensor.mul": lambda logits, target, w: _soft_ce(logits, target).mul(w),
        "loss *= w": inplace,
        "loss.mul_(w)": lambda logits, target, w: _soft_ce(logits, target).mul_(w),
        # a per-image loss weighted, then averaged: the clean term still enters once
        "(per-image * w).mean()": lambda logits, target, w: (
            torch.sum(-target * F.log_softmax(logits, -1), -1) * w
        ).mean(),
    }
    expected = _weighted_grads(spellings.pop("loss * w"))
    unweighted = _weighted_grads(lambda logits, target, w: _soft_ce(logits, target) * float(w))
    assert max(float((a - b).abs().max()) for a, b in zip(expected, unweighted, strict=True)) > 1e-4
    for name, spelling in spellings.items():
        for got, want in zip(_weighted_grads(spelling), expected, strict=True):
            torch.testing.assert_close(
                got, want, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}"
            )


def test_loss_weight_is_a_plain_zero_dim_tensor_otherwise() -> None:
    model = _net()
    mixup_fn = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=SEED, update_ratio=R)
    mixup_fn(*_batch(0))
    weight = mixup_fn.loss_weight
    assert isinstance(weight, LossWeight) and weight.shape == () and weight.dtype == torch.float32
    assert float(weight) == R and weight.item() == R
    for value in (weight + 1, 2 * weight, weight * 2.0, weight.to(torch.float64), weight.detach(), -weight):
        assert type(value) is torch.Tensor
    assert float(weight * 2.0) == 2 * R
    with torch.no_grad():  # a product that no backward can reach carries nothing
        assert type(torch.ones((), requires_grad=True) * weight) is torch.Tensor


# ---------------------------------------------------------------------------------------------- warning
def test_a_loop_that_never_multiplies_is_warned_once_naming_the_fix() -> None:
    model = _net()
    optimizer = _optimizer(model)
    mixup_fn = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=SEED, update_ratio=R)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            mixed, target = mixup_fn(*_batch(step))
            optimizer.zero_grad()
            _soft_ce(model(mixed), target).backward()  # the weight forgotten: the clean term is lost
            optimizer.step()
    lost = [w for w in caught if issubclass(w.category, CleanGradientLostWarning)]
    assert len(lost) == 1, [str(w.message) for w in caught]
    assert "loss * mixup_fn.loss_weight" in str(lost[0].message)
    assert Path(lost[0].filename).name == Path(__file__).name  # points at the caller's mixer call


@pytest.mark.parametrize("ahead", [False, True])
def test_a_loop_that_multiplies_is_not_warned(ahead: bool) -> None:
    """Also when the mixer runs one batch ahead of the backward (a prefetching loop): the product exists
    at the next call, its backward comes later."""
    model = _net()
    optimizer = _optimizer(model)
    mixup_fn = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=SEED, update_ratio=R)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ahead_batch = (*mixup_fn(*_batch(0)), mixup_fn.loss_weight) if ahead else None
        for step in range(4):
            if ahead:  # the next batch is mixed before this one's forward and backward
                (mixed, target, weight), ahead_batch = (
                    ahead_batch,
                    (*mixup_fn(*_batch(step + 1)), mixup_fn.loss_weight),
                )
            else:
                mixed, target = mixup_fn(*_batch(step))
                weight = mixup_fn.loss_weight
            loss = _soft_ce(model(mixed), target) * weight
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        mixup_fn(*_batch(5))  # looks at the last terms too
    assert not [w for w in caught if issubclass(w.category, CleanGradientLostWarning)]


# ------------------------------------------------------------------------------------------------- DDP
WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        ddp = DistributedDataParallel(_net())
        optimizer = _optimizer(ddp)
        mixup_fn = RecordingMixer(ddp, seed=SEED + rank)  # each rank its own draws
        for step in range(STEPS):
            x, y = _chunks(step, WORLD)[rank]
            mixed, target = mixup_fn(x, y)
            optimizer.zero_grad()  # DeiT's place: after the mixer, before backward
            (_soft_ce(ddp(mixed), target) * mixup_fn.loss_weight).backward()
            optimizer.step()
        torch.save({"state": ddp.module.state_dict(), "records": mixup_fn.records}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_rank_ddp_averages_the_clean_term_like_the_rest(tmp_path: Path) -> None:
    """2 ranks (gloo, spawned), DeiT's order: DDP averages each rank's clean term with its mixed gradient,
    so the weights are the reference's over both shards (the rank mean of ``(1 - r) g_clean + r g_mixed``)."""
    out = str(tmp_path / "ddp")
    mp.spawn(_ddp_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    results = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(WORLD)]
    records = [[results[rank]["records"][step] for rank in range(WORLD)] for step in range(STEPS)]
    assert all(record.method == "sage" for step in records for record in step)
    reference = _reference(records, parts=WORLD)
    for result in results:
        model = _net()
        model.load_state_dict(result["state"])
        _assert_same_weights(model, reference, buffers=False)  # DDP broadcasts rank 0's BatchNorm buffers


def test_the_clean_gradient_buffer_is_reused_only_once_released() -> None:
    """A consumed term's buffer is overwritten by the next step (no fresh allocation per step); a term
    whose weight is still held keeps its values."""
    model = _net()
    mixup_fn = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=SEED, update_ratio=R)
    buffers = []
    for step in range(3):
        mixed, target = mixup_fn(*_batch(step))
        buffers.append(mixup_fn.loss_weight.clean.flat.data_ptr())
        (_soft_ce(model(mixed), target) * mixup_fn.loss_weight).backward()
    assert buffers[1] == buffers[0] and buffers[2] == buffers[0]
    held = mixup_fn.loss_weight  # consumed, held: released at the next call all the same
    mixed, target = mixup_fn(*_batch(3))
    assert held.clean.flat is None
    kept = mixup_fn.loss_weight  # not consumed and held: the next call must not touch it
    values = kept.clean.flat.clone()
    mixup_fn(*_batch(4))
    assert mixup_fn.loss_weight.clean.flat.data_ptr() != kept.clean.flat.data_ptr()
    assert torch.equal(kept.clean.flat, values)
    (_soft_ce(model(mixed), target) * kept).backward()  # still usable
    assert kept.clean.consumed


def test_a_weight_kept_but_never_multiplied_is_lost_after_a_few_calls() -> None:
    """Weights kept (say, for logging) but never in a backward: after ``_WATCHED_TERMS`` calls the mixer
    counts them lost, warns once and frees their gradients (no parameter-sized buffer held per step)."""
    from timm_sage.mixup import _WATCHED_TERMS

    model = _net()
    mixup_fn = SageMixup(mode="sage", num_classes=NUM_CLASSES, model=model, seed=SEED, update_ratio=R)
    kept = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(_WATCHED_TERMS + 3):
            mixup_fn(*_batch(step))
            kept.append(mixup_fn.loss_weight)
            lost = [w for w in caught if issubclass(w.category, CleanGradientLostWarning)]
            assert len(lost) == (step > _WATCHED_TERMS)
    assert all(weight.clean.flat is None for weight in kept[:2])
    assert all(weight.clean.flat is not None for weight in kept[-_WATCHED_TERMS:])
