"""The CUDA path, checked on a CPU: what the first AMP batch on a GPU would meet.

* every op the SAGE step dispatches under autocast is one that CUDA autocast accepts (each is redispatched
  at the ``AutocastCUDA`` key, where CUDA autocast refuses ``binary_cross_entropy`` even on CPU tensors),
  and the saliency loss runs with autocast off, for both saliency losses and both AMP dtypes;
* float16 and bfloat16 saliency against float32 on the same model and batch: no underflow to zero maps;
* a CUDA ``torch.Generator`` is refused with a named error where SAGE draws on the host.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from timm_sage import SageMixup, functional

# CUDA autocast's kernels, then the CPU kernel: redispatching a CPU op here runs CUDA autocast's rule for
# it (a cast leaves CPU tensors alone; a refused op raises, whatever its inputs).
_AUTOCAST_CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.CPU
)


class _AutocastState(TorchFunctionMode):
    """Whether autocast is on at each Python-level torch call (inside a dispatch mode, autocast's own
    kernels have switched it off already, so it must be read here), and whether the model has returned
    its logits yet (a forward hook sets ``after_logits``)."""

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        self.stack: list[bool] = []
        self.after_logits = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.stack.append(torch.is_autocast_enabled(self.device_type))
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.stack.pop()

    @property
    def autocast_on(self) -> bool:
        return bool(self.stack) and self.stack[-1]


class CudaAutocastAudit(TorchDispatchMode):
    """Every aten op dispatched while autocast is on that CUDA autocast has a rule for (a cast, or a
    refusal): ``refused`` lists those it refuses; ``loss_ops`` those dispatched after the model returned
    its logits (the saliency loss and what follows it, which must run with autocast off)."""

    def __init__(self, state: _AutocastState) -> None:
        super().__init__()
        self.state = state
        self.checked = 0
        self.refused: list[str] = []
        self.loss_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ruled = torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "AutocastCUDA")
        if self.state.autocast_on and ruled:
            self.checked += 1
            if self.state.after_logits:
                self.loss_ops.append(str(func))
            try:
                func.redispatch(_AUTOCAST_CUDA, *args, **kwargs)
            except RuntimeError as error:
                if "autocast" in str(error):
                    self.refused.append(str(func))
        return func(*args, **kwargs)


def _bn_net(num_classes: int, seed: int = 0) -> nn.Module:
    """A small conv net with BatchNorm, as the timm models SAGE trains (B, 3, H, W) -> (B, num_classes)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )  # fmt: skip


def _batch(batch: int, num_classes: int, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(
        0, num_classes, (batch,), generator=gen
    )


def test_the_audit_catches_a_refused_op_and_a_loss_under_autocast():
    """The guard works: binary_cross_entropy under autocast is refused and counted as a loss op."""
    state = _AutocastState("cpu")
    p, target = torch.rand(4, 3), torch.rand(4, 3)
    with state, CudaAutocastAudit(state) as audit, torch.autocast("cpu", dtype=torch.bfloat16):
        state.after_logits = True
        F.binary_cross_entropy(p, target)
        torch.mm(p, target.t())  # a cast op: accepted
    assert audit.refused == ["aten.binary_cross_entropy.default"]
    assert "aten.binary_cross_entropy.default" in audit.loss_ops and audit.checked == 2


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["bce_softmax", "cross_entropy"])
@pytest.mark.parametrize("options", [{"update_ratio": 0.7}, {"saliency_scale": 0.5, "update_ratio": 1.0}])
def test_every_op_of_the_sage_step_passes_cuda_autocast(amp_dtype, loss, options):
    model = _bn_net(10)
    model.register_forward_hook(lambda *_: setattr(state, "after_logits", True))
    x, y = _batch(8, 10)
    mixer = SageMixup(mode="sage", num_classes=10, model=model, seed=0, amp_dtype=amp_dtype,
                      saliency_loss=loss, **options)  # fmt: skip
    state = _AutocastState("cpu")
    with state, CudaAutocastAudit(state) as audit:
        mixer(x, y)
    assert state.after_logits and audit.checked > 0  # the model's forward ran under autocast
    assert audit.refused == [], f"CUDA autocast refuses {audit.refused}"
    assert audit.loss_ops == [], f"the saliency loss ran under autocast: {audit.loss_ops}"
    assert bool(mixer.last.mixed)


def test_an_outer_autocast_does_not_reach_the_saliency_loss():
    """``saliency_pass`` under the caller's own autocast region: the forward is autocast, the loss is not."""
    model = _bn_net(10)
    model.register_forward_hook(lambda *_: setattr(state, "after_logits", True))
    x, y = _batch(8, 10)
    state = _AutocastState("cpu")
    with state, CudaAutocastAudit(state) as audit, torch.autocast("cpu", dtype=torch.float16):
        functional.saliency_pass(model, x, y, param_grad_weight=0.3)
    assert audit.refused == [] and audit.loss_ops == []


def test_the_loss_scale_is_the_power_of_two_of_the_mean():
    from timm_sage.core.saliency import saliency_loss_scale

    assert saliency_loss_scale(256, 1000, "bce_softmax") == 2.0**18  # 256000 <= 262144
    assert saliency_loss_scale(32, 10, "bce_softmax") == 2.0**9  # 320 <= 512
    assert saliency_loss_scale(32, 1000, "cross_entropy") == 2.0**5  # mean over the 32 images
    assert saliency_loss_scale(1, 1, "cross_entropy") == 1.0


# Smallest per-image cosine to the float32 map; bfloat16 keeps 8 bits of mantissa (measured 0.9988 on
# this model at worst), float16 keeps 11 (measured 0.9996).
MIN_COSINE = {torch.float16: 0.99, torch.bfloat16: 0.99}


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["bce_softmax", "cross_entropy"])
@pytest.mark.parametrize(("batch", "num_classes"), [(256, 1000), (32, 10)])
def test_half_precision_saliency_matches_float32(amp_dtype, loss, batch, num_classes):
    """The SAGE step's maps under CPU autocast against the float32 maps of the same model and batch.
    Before the loss was scaled, every float16 map of the B=256, 1000-class batch was zero (input
    gradients of about 1 / (B * C) flushed to zero), and SAGE fell back to uniform maps silently."""
    x, y = _batch(batch, num_classes)
    reference = functional.saliency_map(_bn_net(num_classes), x, y, loss=loss)
    mixer = SageMixup(mode="sage", num_classes=num_classes, model=_bn_net(num_classes), seed=0,
                      amp_dtype=amp_dtype, saliency_loss=loss, update_ratio=0.7)  # fmt: skip
    mixer(x, y)
    maps = mixer.last.saliency
    assert bool((maps.flatten(1).amax(1) > 0).all()), "a map underflowed to zero"
    cosine = F.cosine_similarity(maps.flatten(1), reference.flatten(1))
    assert float(cosine.min()) >= MIN_COSINE[amp_dtype], f"min per-image cosine {float(cosine.min()):.4f}"


# Relative error of the clean parameter gradient under autocast, measured on this model: float16 0.010
# (0.69 before the loss was scaled: every conv gradient was zero), bfloat16 0.029 (its 8-bit mantissa).
MAX_GRAD_ERROR = {torch.float16: 0.03, torch.bfloat16: 0.06}


def _weight_grads(model: nn.Module) -> torch.Tensor:
    # The conv biases feed BatchNorm, which cancels them: their true gradient is rounding noise.
    kept = [p.grad.flatten() for name, p in model.named_parameters() if name not in ("0.bias", "3.bias")]
    return torch.cat(kept)


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_clean_gradient_matches_float32(amp_dtype):
    """The clean loss's parameter gradient (update_ratio < 1) from the scaled half-precision backward, the
    scale undone in float32, against the float32 gradient (B=256, 1000 classes)."""
    x, y = _batch(256, 1000)
    reference = _bn_net(1000)
    functional.saliency_pass(reference, x, y, param_grad_weight=0.3)
    model = _bn_net(1000)
    with torch.autocast("cpu", dtype=amp_dtype):
        functional.saliency_pass(model, x, y, param_grad_weight=0.3)
    got, want = _weight_grads(model), _weight_grads(reference)
    error = float((got - want).norm() / want.norm())
    assert error < MAX_GRAD_ERROR[amp_dtype], f"relative error {error:.3g}"


# ------------------------------------------------------------------------------ generators and draws
class _CudaLikeGenerator(torch.Generator):
    """A generator that reports a CUDA device (a CPU-only build cannot make a real one)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0)


def test_a_device_generator_is_refused_by_name():
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator.*cuda:0"):
        SageMixup(mode="sage", num_classes=10, generator=_CudaLikeGenerator())
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator"):
        functional.sample_sage_params(
            8, 16, 16, alpha=1.0, upper_lambda=0.6, rand_pos=0.1, generator=_CudaLikeGenerator()
        )
    with pytest.raises(ValueError, match="coin_seed must be >= 0"):
        SageMixup(mode="sage", num_classes=10, coin_seed=-1)


def test_one_coin_seed_gives_one_method_sequence_and_own_partners():
    """What each DDP rank does: its own seed, the shared coin_seed."""
    x, y = _batch(8, 10)
    records = []
    for seed in (3, 4):
        mixer = SageMixup(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.6, mode="sage", num_classes=10,
                          seed=seed, coin_seed=11)  # fmt: skip
        methods, perms = [], []
        for _ in range(12):
            mixer(x, y, saliency=torch.ones(8, 16, 16))
            methods.append(mixer.last.method)
            perms.append(mixer.last.perm.tolist())
        records.append((methods, perms))
    assert records[0][0] == records[1][0] and set(records[0][0]) == {"sage", "cutmix", "none"}
    sage_steps = [k for k, method in enumerate(records[0][0]) if method == "sage"]
    assert any(records[0][1][k] != records[1][1][k] for k in sage_steps)
    # the coins' state is part of the mixer's checkpointed state
    mixer = SageMixup(cutmix_alpha=1.0, prob=0.5, mode="sage", num_classes=10, seed=3, coin_seed=11)
    state = mixer.rng_state()
    first = [mixer(x, y, saliency=torch.ones(8, 16, 16)) and mixer.last.method for _ in range(6)]
    mixer.set_rng_state(state)
    assert [mixer(x, y, saliency=torch.ones(8, 16, 16)) and mixer.last.method for _ in range(6)] == first


# ------------------------------------------------------------------------- on a CUDA device (gpu_check)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_generator_is_refused_by_name():
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator"):
        SageMixup(mode="sage", num_classes=10, generator=torch.Generator(device="cuda"))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(
    "options",
    [
        {"amp_dtype": torch.float16, "update_ratio": 0.7, "scaler": True},
        {"amp_dtype": torch.bfloat16, "saliency_loss": "cross_entropy"},
        {"amp_dtype": torch.bfloat16, "search_size": 8, "saliency_scale": 0.5},
        {"cutmix_alpha": 1.0, "prob": 0.7},
    ],
)
def test_cuda_sage_step_never_syncs(options):
    """``torch.cuda.set_sync_debug_mode("error")`` raises on any op that waits for the device."""
    options = dict(options)
    device = torch.device("cuda")
    model = _bn_net(10).to(device).to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda") if options.pop("scaler", False) else None
    mixer = SageMixup(mode="sage", num_classes=10, model=model, seed=0, **options)
    x, y = (t.to(device) for t in _batch(32, 10))
    while mixer(x, y) and mixer.last.method != "sage":  # the first SAGE call checks the labels (syncs)
        pass
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            images, target = mixer(x, y)
            if scaler is not None:  # the weighted loss's backward carries the clean term: no sync either
                with torch.autocast("cuda", dtype=options["amp_dtype"]):
                    logits = model(images)
                loss = torch.sum(-target * torch.log_softmax(logits.float(), -1), -1).mean()
                scaler.scale(loss * mixer.loss_weight).backward()
                model.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert mixer.last.lam.device.type == "cuda"


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["bce_softmax", "cross_entropy"])
def test_cuda_half_precision_saliency_matches_float32(amp_dtype, loss):
    device = torch.device("cuda")
    x, y = (t.to(device) for t in _batch(256, 1000))
    reference = functional.saliency_map(_bn_net(1000).to(device), x, y, loss=loss)
    mixer = SageMixup(mode="sage", num_classes=1000, model=_bn_net(1000).to(device), seed=0,
                      amp_dtype=amp_dtype, saliency_loss=loss, update_ratio=0.7)  # fmt: skip
    mixer(x, y)
    cosine = F.cosine_similarity(mixer.last.saliency.flatten(1), reference.flatten(1))
    assert float(cosine.min()) >= MIN_COSINE[amp_dtype], f"min per-image cosine {float(cosine.min()):.4f}"
