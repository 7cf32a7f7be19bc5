"""``timm-sage bench``: the mixing call, full training steps, scaling and memory, side by side.

Every figure of one invocation is measured in the same process (memory: in fresh child processes), as
the median of ``--repeats`` runs after ``--warmup`` runs, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import multiprocessing
import resource
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from timm_sage import functional
from timm_sage.mixup import SageMixup
from timm_sage.tools.bench_model import (
    add_model_arguments,
    check_model_arguments,
    model_command,
    suite_model_step,
)
from timm_sage.tools.report import write_between_markers
from timm_sage.tools.timing import (
    BenchRow,
    format_table,
    interleaved_times_ms,
    machine_description,
    median_ms,
    write_json_atomic,
)

SUITES = ("mix", "step", "scale", "memory", "compile")


@dataclass(frozen=True)
class MixCase:
    """A mixing benchmark: batch, image side, the model whose training step is the yardstick."""

    label: str
    batch: int
    size: int
    model: str
    num_classes: int
    search_sizes: tuple[int | None, ...] = (None,)


FULL_MIX_CASES = (
    MixCase("cifar B=100 3x32x32", 100, 32, "preactresnet18", 10),
    MixCase("B=8 3x128x128", 8, 128, "preactresnet18", 10),
    MixCase("imagenet B=32 3x224x224", 32, 224, "resnet50", 1000, (None, 56)),
)
QUICK_MIX_CASES = (
    MixCase("quick B=8 3x16x16", 8, 16, "test_resnet", 10),
    MixCase("quick B=4 3x32x32", 4, 32, "test_resnet", 10, (None, 8)),
)
# On CUDA: bf16 autocast and channels_last, as a GPU user trains; the 224 px case at B=64.
CUDA_MIX_CASES = (
    MixCase("cifar B=100 3x32x32", 100, 32, "preactresnet18", 10),
    MixCase("imagenet B=64 3x224x224", 64, 224, "resnet50", 1000, (None, 56)),
)
# --search-only: the search rows alone (no model), where the step's cost would take too long (224 px on
# the CPU).
SEARCH_MIX_CASES = (MixCase("imagenet B=64 3x224x224", 64, 224, "resnet50", 1000, (None, 56)),)

# Memory-traffic model of the windows kernel's exact search, in bytes per (image, candidate, pixel)
# element, float32, the anchor's broadcast reads assumed cached: gather (read the window, write) 8, add
# (read, write) 8, reciprocal (read, write) 8, sum (read) 4 = 28. The direct form it replaced (gather,
# sub, mul, add, clamp, div, sum: 15 accesses) moved 60.
WINDOWS_BYTES_PER_ELEMENT = 28
WINDOWS_BYTES_PER_ELEMENT_BEFORE = 60


def _model(name: str, num_classes: int, device: torch.device) -> torch.nn.Module:
    import timm

    return timm.create_model(name, num_classes=num_classes).to(device).train()


def _batch(batch: int, size: int, num_classes: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return x, y


def _train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool = False
) -> Callable:
    def step(x: torch.Tensor, target: torch.Tensor, weight: float | torch.Tensor = 1.0) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = torch.sum(-target * F.log_softmax(model(x), -1), -1).mean() * weight
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _soft(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y, num_classes).float()


def _other_mixers(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Callable[[], object]]:
    """timm Mixup/CutMix (batch and elem modes) and torchvision v2 MixUp/CutMix on the same batch."""
    from timm.data import Mixup
    from torchvision.transforms import v2

    timm_mixers = {
        f"timm {kind} {mode}": Mixup(
            mixup_alpha=1.0 if kind == "mixup" else 0.0,
            cutmix_alpha=1.0 if kind == "cutmix" else 0.0,
            mode=mode,
            num_classes=num_classes,
        )
        for kind in ("mixup", "cutmix")
        for mode in ("batch", "elem")
    }
    # timm mixes in place: each call gets a fresh copy, as a training loop's new batch would be.
    calls: dict[str, Callable[[], object]] = {
        name: functools.partial(_call_on_copy, mixer, x, y) for name, mixer in timm_mixers.items()
    }
    calls["torchvision v2 MixUp"] = functools.partial(v2.MixUp(num_classes=num_classes), x, y)
    calls["torchvision v2 CutMix"] = functools.partial(v2.CutMix(num_classes=num_classes), x, y)
    return calls


def _call_on_copy(mixer: Callable, x: torch.Tensor, y: torch.Tensor) -> object:
    return mixer(x.clone(), y)


def _mixed_step(
    step: Callable, mixer: Callable | None, x: torch.Tensor, y: torch.Tensor, classes: int
) -> None:
    if mixer is None:
        step(x, _soft(y, classes))
    else:
        images, target = mixer(x.clone(), y)
        step(images, target, getattr(mixer, "loss_weight", 1.0))  # SAGE: the paper's loss weight r


def suite_mix(
    device: torch.device, repeats: int, warmup: int, quick: bool, search_only: bool = False
) -> list[BenchRow]:
    """sage_mix and the saliency pass next to a training step, plus timm/torchvision mixers; each search
    kernel on its own for the exact search. With ``search_only``, the search rows alone (no model; ratios
    to the exact ``sage_mix``). On CUDA the step and the saliency pass run under bf16 autocast with
    channels_last."""
    if quick:
        cases = QUICK_MIX_CASES
    elif search_only:
        cases = SEARCH_MIX_CASES
    else:
        cases = CUDA_MIX_CASES if device.type == "cuda" else FULL_MIX_CASES
    amp = device.type == "cuda"
    rows: list[BenchRow] = []
    for case in tqdm(cases, desc="bench mix", leave=False):
        label = case.label + (" bf16 cl" if amp else "")
        timed = functools.partial(median_ms, device=device, repeats=repeats, warmup=warmup)
        x, y = _batch(case.batch, case.size, case.num_classes, device)
        if search_only:
            gen = torch.Generator().manual_seed(3)
            saliency = functional.blur_maps(torch.rand(case.batch, case.size, case.size, generator=gen) ** 4)
            saliency = saliency.to(device)
            base, step_ms = None, None
        else:
            model = _model(case.model, case.num_classes, device)
            if amp:
                model = model.to(memory_format=torch.channels_last)
            step = _train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), amp)
            soft = _soft(y, case.num_classes)
            base = f"{case.model} train step"
            step_ms = timed(_maybe_autocast(functools.partial(step, x, soft), device, amp))
            rows.append(BenchRow("mix", label, base, step_ms, base, 1.0))
            with _autocast(device, amp):
                saliency = functional.saliency_map(model, x, y)
            for scale in (1.0, 0.5):
                for ratio in (1.0, 0.7):
                    # The saliency pass of each variant: input gradients only (r = 1), or with the clean
                    # loss's weight gradients too (r = 0.7), at full or half resolution (saliency_scale).
                    call = functools.partial(
                        functional.saliency_pass, model, x, y, param_grad_weight=1.0 - ratio, scale=scale
                    )
                    ms = timed(_maybe_autocast(call, device, amp))
                    name = f"saliency pass saliency_scale={scale:g} update_ratio={ratio:g}"
                    rows.append(BenchRow("mix", label, name, ms, base, ms / step_ms))
            model.zero_grad(set_to_none=True)
        rows += _search_rows(case, label, x, saliency, device, timed, base, step_ms)
        if not search_only:
            for name, call in _other_mixers(x, y, case.num_classes).items():
                ms = timed(call)
                rows.append(BenchRow("mix", label, name, ms, base, ms / step_ms))
    return rows


def _search_rows(
    case: MixCase,
    label: str,
    x: torch.Tensor,
    saliency: torch.Tensor,
    device: torch.device,
    timed: Callable[[Callable[[], object]], float],
    base: str | None,
    step_ms: float | None,
) -> list[BenchRow]:
    """``sage_mix`` exact and pooled, and the exact search with each kernel forced (``"windows"``, the
    device path, with its memory-traffic model in ``extra``; ``"overlap"``, the CPU path). Ratios to the
    training step ``base``, or, without one, to the exact ``sage_mix``."""
    from timm_sage.core import search

    rows: list[BenchRow] = []
    perm = torch.randperm(case.batch, generator=torch.Generator().manual_seed(1)).to(device)
    reference: tuple[str, float] | None = (base, step_ms) if base is not None and step_ms else None

    def add(name: str, ms: float, extra: dict) -> None:
        nonlocal reference
        reference = reference or (name, ms)
        rows.append(BenchRow("mix", label, name, ms, reference[0], ms / reference[1], extra))

    for search_size in case.search_sizes:
        translations = functional.sample_translations(
            case.size, case.size, 0.01, generator=torch.Generator().manual_seed(2), search_size=search_size
        )
        count = translations.shape[0]
        mix = functools.partial(
            functional.sage_mix, x, saliency, perm=perm, prior=0.3, translations=translations.to(device),
            search_size=search_size,
        )  # fmt: skip
        ms = timed(mix)
        kind = "exact" if search_size is None else f"search_size={search_size}"
        add(f"sage_mix {kind} K={count}", ms, {"per_image_ms": ms / case.batch, "candidates": count})
        if search_size is not None:
            continue
        prior = torch.full((case.batch,), 0.3, device=device)
        s0, s1 = functional.normalise_saliency(saliency.float(), perm, prior)
        for kernel in search.SEARCH_KERNELS:
            # The overlap kernel walks host candidates; the windows kernel takes them on the device.
            candidates = translations if kernel == "overlap" else translations.to(device)
            ms = timed(functools.partial(_best, s0, s1, candidates, kernel))
            extra = {"per_image_ms": ms / case.batch, "candidates": count}
            if kernel == "windows":
                elements = case.batch * count * case.size * case.size
                extra["traffic_model_gb"] = elements * WINDOWS_BYTES_PER_ELEMENT / 1e9
                extra["traffic_model_gb_before"] = elements * WINDOWS_BYTES_PER_ELEMENT_BEFORE / 1e9
            add(f"search exact kernel={kernel} K={count}", ms, extra)
    return rows


def _best(s0: torch.Tensor, s1: torch.Tensor, translations: torch.Tensor, kernel: str) -> torch.Tensor:
    from timm_sage.core import search

    return search.translation_scores(s0, s1, translations, kernel=kernel).argmax(1)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _maybe_autocast(fn: Callable[[], object], device: torch.device, enabled: bool) -> Callable[[], object]:
    if not enabled:
        return fn
    return functools.partial(_autocast_call, fn, device)


# SAGE variants of the step suite: name -> SageConfig options. "cheap" is the saliency pass at half
# resolution (saliency_scale=0.5), at both update ratios; then the levers: the saliency pass at a fixed
# small size (saliency_size) and the clean term from unmixed images of the batch (clean_term="in_batch").
SAGE_STEP_VARIANTS: dict[str, dict[str, float | int | str]] = {
    "sage update_ratio=1": {"update_ratio": 1.0},
    "sage update_ratio=0.7": {"update_ratio": 0.7},
    "sage cheap saliency_scale=0.5 update_ratio=1": {"update_ratio": 1.0, "saliency_scale": 0.5},
    "sage cheap saliency_scale=0.5 update_ratio=0.7": {"update_ratio": 0.7, "saliency_scale": 0.5},
    "sage saliency_size=16 update_ratio=1": {"update_ratio": 1.0, "saliency_size": 16},
    "sage clean_term=in_batch update_ratio=0.7": {"update_ratio": 0.7, "clean_term": "in_batch"},
    # Forward-only saliency (saliency_source): one no-grad forward instead of a forward and a backward; the
    # ema rows take it from a timm ModelEmaV3 copy (whose update, the user's, is not timed here).
    "sage saliency_source=cam update_ratio=1": {"saliency_source": "cam"},
    "sage saliency_source=cam saliency_scale=0.5 update_ratio=1": {
        "saliency_source": "cam",
        "saliency_scale": 0.5,
    },
    "sage saliency_source=features update_ratio=1": {"saliency_source": "features"},
    "sage saliency_source=features saliency_scale=0.5 update_ratio=1": {
        "saliency_source": "features",
        "saliency_scale": 0.5,
    },
    "sage saliency_source=cam saliency_model=ema update_ratio=1": {
        "saliency_source": "cam",
        "saliency_model": "ema",
    },
    "sage saliency_source=cam clean_term=in_batch update_ratio=0.7": {
        "saliency_source": "cam",
        "update_ratio": 0.7,
        "clean_term": "in_batch",
    },
}


@dataclass(frozen=True)
class StepCase:
    """A training-step benchmark: model, batch, image side; on CUDA, bf16 autocast and channels_last."""

    model: str
    batch: int
    size: int
    num_classes: int = 10


FULL_STEP_CASES = (StepCase("preactresnet18", 100, 32), StepCase("resnet18", 16, 128))
# 128 px: test_resnet's last feature map is 4x4 there, 2x2 at half resolution (1x1 at 32 px and below,
# where the forward-only sources refuse).
QUICK_STEP_CASES = (StepCase("test_resnet", 8, 128),)
CUDA_STEP_CASES = (StepCase("preactresnet18", 100, 32), StepCase("resnet50", 64, 224, 1000))


def suite_step(
    device: torch.device, repeats: int, warmup: int, quick: bool, sources: tuple[str, ...] | None = None
) -> list[BenchRow]:
    """Full training steps: vanilla, timm Mixup, timm CutMix and SAGE (exact and cheap saliency, update_ratio
    1 and 0.7), each case in one process so the ratios compare like with like. On CUDA: bf16 autocast and
    channels_last, as a GPU user trains. ``sources``: only the SAGE rows of these saliency sources
    (``--saliency-source``; None: every row)."""
    from timm.data import Mixup
    from timm.utils import ModelEmaV3

    from timm_sage.config import SageConfig

    cases = QUICK_STEP_CASES if quick else CUDA_STEP_CASES if device.type == "cuda" else FULL_STEP_CASES
    amp = device.type == "cuda"
    rows: list[BenchRow] = []
    for case in cases:
        label_case = f"{case.model} B={case.batch} 3x{case.size}x{case.size}" + (" bf16 cl" if amp else "")
        base_model = _model(case.model, case.num_classes, device)
        if amp:
            base_model = base_model.to(memory_format=torch.channels_last)
        x, y = _batch(case.batch, case.size, case.num_classes, device)
        classes = case.num_classes
        mixers: dict[str, Callable | dict | None] = {
            "vanilla": None,
            "timm mixup": Mixup(mixup_alpha=1.0, label_smoothing=0.0, num_classes=classes),
            "timm cutmix": Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=classes),
            **_variants_of(sources),
        }
        steps: dict[str, Callable[[], None]] = {}
        for label, mixer in mixers.items():
            model = copy.deepcopy(base_model)
            step = _train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), amp)
            if isinstance(mixer, dict):
                ema = ModelEmaV3(model) if mixer.get("saliency_model") == "ema" else None
                mixer = SageMixup(
                    mixup_alpha=1.0, mode="sage", label_smoothing=0.0, num_classes=classes, model=model,
                    config=SageConfig(**mixer), seed=0, amp_dtype=torch.bfloat16 if amp else None,
                    ema_model=ema,
                )  # fmt: skip
            full_step = functools.partial(_mixed_step, step, mixer, x, y, classes)
            if amp:
                full_step = functools.partial(_autocast_call, full_step, device)
            steps[label] = full_step
        fixed = _fixed_cost_calls(base_model, x, y, classes, device, amp, sources)
        steps.update(fixed)
        desc = f"bench step {label_case}"
        times = interleaved_times_ms(steps, device, repeats=repeats, warmup=warmup, desc=desc)
        medians = {label: statistics.median(values) for label, values in times.items()}
        for label, ms in medians.items():
            spread = {"min_ms": min(times[label]), "max_ms": max(times[label])}
            if label in fixed:
                spread.update(count_step_ops(fixed[label]))
            rows.append(BenchRow("step", label_case, label, ms, "vanilla", ms / medians["vanilla"], spread))
    return rows


# The compile suite: name -> (model compiled?, SageConfig options or None for vanilla). "exact" is the
# paper's PreActResNet18 setting (update_ratio 0.7, the clean term through the saliency pass's backward);
# "cheapest lever" the saliency pass at a fixed 16 px side with update_ratio 1 (docs/choosing.md). The
# "saliency eager" row is the compiled model with its saliency pass kept eager (saliency_compile "eager",
# the only path before it existed).
COMPILE_STEP_VARIANTS: dict[str, tuple[bool, dict[str, float | int | str] | None]] = {
    "vanilla eager": (False, None),
    "sage exact update_ratio=0.7 eager": (False, {"update_ratio": 0.7}),
    "vanilla compiled": (True, None),
    "sage exact update_ratio=0.7 compiled": (True, {"update_ratio": 0.7}),
    "sage exact update_ratio=0.7 compiled, saliency eager": (
        True,
        {"update_ratio": 0.7, "saliency_compile": "eager"},
    ),  # fmt: skip
    "sage saliency_size=16 update_ratio=1 compiled": (True, {"update_ratio": 1.0, "saliency_size": 16}),
}
FULL_COMPILE_CASES = (StepCase("preactresnet18", 32, 32),)
QUICK_COMPILE_CASES = (StepCase("test_resnet", 8, 16),)
# resnet18, not resnet50: the compile stage of the GPU check (.ci/gpu_check.sh) must fit its limit with a
# few cold inductor compiles (resnet50: 40-70 s each).
CUDA_COMPILE_CASES = (StepCase("resnet18", 64, 224, 1000),)


def suite_compile(
    device: torch.device, repeats: int, warmup: int, quick: bool, backend: str = "inductor"
) -> list[BenchRow]:
    """Training steps with ``torch.compile(model, backend=backend)`` beside eager ones, in one process:
    vanilla and SAGE (exact, and the cheapest lever), the SAGE saliency pass compiled with the model
    (``saliency_compile="follow"``) or kept eager. Ratios against the compiled vanilla step. Compilation
    happens in the warm-up (at least one warm-up run is forced); on CUDA with bf16 autocast and
    channels_last."""
    from timm_sage.config import SageConfig

    # Every row compiles its own model copy: more graphs on one forward's code than dynamo's default
    # cache limit (8) would allow before it falls back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    cases = (
        QUICK_COMPILE_CASES if quick else CUDA_COMPILE_CASES if device.type == "cuda" else FULL_COMPILE_CASES
    )
    amp = device.type == "cuda"
    rows: list[BenchRow] = []
    for case in cases:
        label_case = f"{case.model} B={case.batch} 3x{case.size}x{case.size} {backend}" + (
            " bf16 cl" if amp else ""
        )
        base_model = _model(case.model, case.num_classes, device)
        if amp:
            base_model = base_model.to(memory_format=torch.channels_last)
        x, y = _batch(case.batch, case.size, case.num_classes, device)
        steps: dict[str, Callable[[], None]] = {}
        for label, (compiled, options) in COMPILE_STEP_VARIANTS.items():
            plain = copy.deepcopy(base_model)
            model = torch.compile(plain, backend=backend) if compiled else plain
            step = _train_step(model, torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9), amp)
            mixer = None
            if options is not None:
                mixer = SageMixup(
                    mixup_alpha=1.0, mode="sage", label_smoothing=0.0, num_classes=case.num_classes,
                    model=model, config=SageConfig(**options), seed=0,
                    amp_dtype=torch.bfloat16 if amp else None,
                )  # fmt: skip
            full_step = functools.partial(_mixed_step, step, mixer, x, y, case.num_classes)
            if amp:
                full_step = functools.partial(_autocast_call, full_step, device)
            steps[label] = full_step
        for full_step in tqdm(steps.values(), desc=f"compile {label_case}", leave=False):
            full_step()  # compiles (the timed warm-up below then runs compiled code)
        times = interleaved_times_ms(steps, device, repeats=repeats, warmup=max(1, warmup), desc=label_case)
        medians = {label: statistics.median(values) for label, values in times.items()}
        for label, ms in medians.items():
            spread = {"min_ms": min(times[label]), "max_ms": max(times[label])}
            ratio = ms / medians["vanilla compiled"]
            rows.append(BenchRow("compile", label_case, label, ms, "vanilla compiled", ratio, spread))
    return rows


# ---- the SAGE step's fixed costs: everything but the model's forward and backward -------------------------
_counting: list[int] = [0]  # > 0 while the replayed model runs: its own ops are not the step's


class _ReplayedForwardBackward(torch.autograd.Function):
    """The model's forward and backward, replayed from a recording of the same batch: forward returns the
    recorded logits, backward the recorded gradients of its input and parameters (whatever reaches it)."""

    @staticmethod
    def forward(ctx, record: dict, inputs: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.record = record
        _counting[0] += 1
        try:
            return record["logits"].clone()
        finally:
            _counting[0] -= 1

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        record = ctx.record
        _counting[0] += 1
        try:  # a copy of the input gradient: the saliency pass may scale it in place
            return None, record["grad_input"].clone(), *record["grad_params"]
        finally:
            _counting[0] -= 1


class ReplayedModel(torch.nn.Module):
    """``model`` with its forward and backward cost removed: each input shape (and autocast state) is run
    through the real model once, and replayed from then on (:class:`_ReplayedForwardBackward`). A SAGE
    step through it times the step's fixed costs: the clean loss, the map's reduction and blur, the
    search, the mix, the soft targets, the clean-gradient bookkeeping and the Python around them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self._records: dict[tuple, dict] = {}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        key = (tuple(inputs.shape), inputs.dtype, torch.is_autocast_enabled(inputs.device.type))
        if key not in self._records:
            _counting[0] += 1
            try:
                self._records[key] = self._record(inputs)
            finally:
                _counting[0] -= 1
        return _ReplayedForwardBackward.apply(self._records[key], inputs, *self.model.parameters())

    def _record(self, inputs: torch.Tensor) -> dict:
        leaf = inputs.detach().clone().requires_grad_(True)
        params = list(self.model.parameters())
        with torch.enable_grad():
            logits = self.model(leaf)
            grads = torch.autograd.grad(
                logits.float().logsumexp(-1).mean(), [leaf, *params], allow_unused=True
            )
        grad_params = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:], strict=True)
        ]
        return {"logits": logits.detach(), "grad_input": grads[0], "grad_params": grad_params}


class _OpCounter(TorchDispatchMode):
    """Counts the tensor operations dispatched (a proxy for kernel launches), those of the replayed model
    left out; ``kernels`` leaves out views too (no kernel runs for a view)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _counting[0] == 0:
            self.ops += 1
            self.kernels += not func.is_view
        return func(*args, **(kwargs or {}))


def count_step_ops(call: Callable[[], object]) -> dict[str, int]:
    """``{"ops": ..., "kernel_ops": ...}`` dispatched by one ``call()`` (after the timed runs: warm)."""
    with _OpCounter() as counter:
        call()
    return {"ops": counter.ops, "kernel_ops": counter.kernels}


def _variants_of(sources: tuple[str, ...] | None) -> dict[str, dict[str, float | int | str]]:
    """The SAGE step variants whose ``saliency_source`` is among ``sources`` (None: all of them)."""
    if sources is None:
        return dict(SAGE_STEP_VARIANTS)
    return {k: v for k, v in SAGE_STEP_VARIANTS.items() if v.get("saliency_source", "gradient") in sources}


def _fixed_cost_calls(
    base_model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    device: torch.device,
    amp: bool,
    sources: tuple[str, ...] | None = None,
) -> dict[str, Callable[[], None]]:
    """For each SAGE variant, ``"fixed: <variant>"``: its step with the model's forward and backward
    replayed (:class:`ReplayedModel`): the mixer call, then the backward share of the clean term (the
    backward of ``zero * loss_weight``: the gradient the weight carries into the caller's backward)."""
    from timm_sage.config import SageConfig
    from timm_sage.core.clean import LossWeight

    calls: dict[str, Callable[[], None]] = {}
    for label, options in _variants_of(sources).items():
        if options.get("saliency_source", "gradient") != "gradient":
            continue  # the replayed model has no forward_features to replay: no fixed-cost row
        replayed = ReplayedModel(copy.deepcopy(base_model))
        mixer = SageMixup(
            mixup_alpha=1.0, mode="sage", label_smoothing=0.0, num_classes=classes, model=replayed,
            config=SageConfig(**options), seed=0, amp_dtype=torch.bfloat16 if amp else None,
        )  # fmt: skip
        zero = torch.zeros((), device=device, requires_grad=True)

        def call(
            mixer: SageMixup = mixer, replayed: ReplayedModel = replayed, zero: torch.Tensor = zero
        ) -> None:
            mixer(x.clone(), y)
            if isinstance(mixer.loss_weight, LossWeight):
                (zero * mixer.loss_weight).backward()
                replayed.zero_grad(set_to_none=True)

        calls[f"fixed: {label}"] = functools.partial(_autocast_call, call, device) if amp else call
    return calls


def _autocast_call(fn: Callable[[], None], device: torch.device) -> None:
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        fn()


def suite_scale(
    device: torch.device, repeats: int, warmup: int, quick: bool, plot: Path | None = None
) -> list[BenchRow]:
    """sage_mix cost as the image side and the batch grow, exact and with search_size=56."""
    sizes = (16, 32) if quick else (32, 64, 128, 224, 384)
    batches = (4, 8) if quick else (32, 64, 128, 256)
    search = 8 if quick else 56
    rows: list[BenchRow] = []
    runs = [
        ("size", s, 8 if not quick else 2, ss) for s in sizes for ss in (None, search) if not (ss and ss >= s)
    ]
    runs += [("batch", 32 if not quick else 16, b, None) for b in batches]
    for axis, size, batch, search_size in tqdm(runs, desc="bench scale", leave=False):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        saliency = torch.rand(batch, size, size, generator=g).to(device)
        perm = torch.randperm(batch, generator=g).to(device)
        translations = functional.sample_translations(size, size, 0.01, generator=g, search_size=search_size)
        mix = functools.partial(
            functional.sage_mix,
            x,
            saliency,
            perm=perm,
            prior=0.3,
            translations=translations.to(device),
            search_size=search_size,
        )
        ms = median_ms(mix, device, repeats=repeats, warmup=warmup)
        label = "exact" if search_size is None else f"search_size={search_size}"
        rows.append(
            BenchRow(
                "scale",
                f"{axis}: B={batch} {size}x{size}",
                f"sage_mix {label}",
                ms,
                extra={
                    "axis": axis,
                    "size": size,
                    "batch": batch,
                    "search_size": search_size,
                    "candidates": translations.shape[0],
                    "per_image_ms": ms / batch,
                },
            )
        )
    if plot is not None:
        _plot_scale(rows, plot)
    return rows


def _plot_scale(rows: list[BenchRow], path: Path) -> None:
    from timm_sage.tools.plots import loglog_plot

    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for row in rows:
        axis = row.extra["axis"]
        if axis == "size":
            xlabel, x = f"image side (B={row.extra['batch']})", row.extra["size"]
        else:
            xlabel, x = f"batch size ({row.extra['size']}x{row.extra['size']})", row.extra["batch"]
        xs, ys = panels.setdefault(xlabel, {}).setdefault(row.name, ([], []))
        xs.append(x)
        ys.append(row.value)
    loglog_plot(panels, path, title="sage_mix cost (median ms)", ylabel="ms")


MEMORY_KINDS = ("vanilla", "sage r=1", "sage r=0.7")


def _memory_mixer(kind: str, model: torch.nn.Module) -> Callable | None:
    """The mixer of one memory-suite kind (None for vanilla)."""
    if kind == "vanilla":
        return None
    ratio = 0.7 if kind == "sage r=0.7" else 1.0
    return SageMixup(mixup_alpha=1.0, mode="sage", num_classes=10, model=model, seed=0, update_ratio=ratio)


def _peak_rss_child(kind: str, quick: bool, queue) -> None:
    torch.set_num_threads(1 if quick else torch.get_num_threads())
    name, batch, size = ("test_resnet", 8, 16) if quick else ("preactresnet18", 100, 32)
    model = _model(name, 10, torch.device("cpu"))
    step = _train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    x, y = _batch(batch, size, 10, torch.device("cpu"))
    mixer = _memory_mixer(kind, model)
    _mixed_step(step, mixer, x, y, 10)  # optimizer state, allocator warm
    before = _reset_peak_rss()
    for _ in range(2):
        _mixed_step(step, mixer, x, y, 10)
    queue.put((before, _peak_rss_mib()))


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux: clear_refs 5) and return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mib("VmRSS")
    except OSError:  # not Linux: fall back to the lifetime peak, which can only understate growth
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_rss_mib() -> float:
    try:
        return _status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def suite_memory(device: torch.device, repeats: int, warmup: int, quick: bool) -> list[BenchRow]:
    """Peak memory of a SAGE step against a vanilla step (CPU: peak RSS of a fresh process, MiB)."""
    rows: list[BenchRow] = []
    kinds = MEMORY_KINDS
    if device.type == "cuda":
        return _cuda_memory(device, kinds)
    context = multiprocessing.get_context("spawn")
    peaks = {}
    for kind in tqdm(kinds, desc="bench memory", leave=False):
        queue = context.Queue()
        process = context.Process(target=_peak_rss_child, args=(kind, quick, queue))
        process.start()
        peaks[kind] = queue.get(timeout=600)
        process.join()
    # The process's own footprint (torch, model, batch) is the same for every kind: the step's share is
    # the growth of the peak during the steps, and that is what the ratio compares.
    growth = {kind: max(after - before, 1e-3) for kind, (before, after) in peaks.items()}
    for kind in kinds:
        before, after = peaks[kind]
        extra = {"process_peak_mib": after, "before_steps_mib": before}
        ratio = growth[kind] / growth["vanilla"]
        rows.append(
            BenchRow("memory", "step peak RSS growth", kind, growth[kind], "vanilla", ratio, extra, "MiB")
        )
    return rows


def _cuda_memory(device: torch.device, kinds: tuple[str, ...]) -> list[BenchRow]:
    rows, peaks = [], {}
    x, y = _batch(100, 32, 10, device)
    for kind in kinds:
        model = _model("preactresnet18", 10, device)
        step = _train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3))
        mixer = _memory_mixer(kind, model)
        _mixed_step(step, mixer, x, y, 10)  # optimizer state, allocator warm
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        _mixed_step(step, mixer, x, y, 10)
        peaks[kind] = torch.cuda.max_memory_allocated(device) / 2**20
    for kind in kinds:
        ratio = peaks[kind] / peaks["vanilla"]
        rows.append(BenchRow("memory", "CUDA max allocated", kind, peaks[kind], "vanilla", ratio, unit="MiB"))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "suites", nargs="*", default=["mix"], help=f"any of {', '.join(SUITES)} (default: mix)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--plot-dir", type=Path, default=None, help="folder for the scale suite's PNG")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for smoke tests")
    parser.add_argument(
        "--search-only",
        action="store_true",
        help="mix suite: only the search rows (sage_mix exact and pooled, each search kernel), no model; "
        "at 224 x 224, B=64 unless --quick",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="Markdown file whose bench section gets the table (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (torch.set_num_threads); default: torch's, usually one per core",
    )
    parser.add_argument(
        "--saliency-source",
        nargs="+",
        choices=("gradient", "cam", "features"),
        default=None,
        help="step suite: only the SAGE rows of these saliency sources (default: every row); with --model: "
        "also the rows of the forward-only ones among them (cam, features; full and half resolution)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="compile suite: torch.compile's backend (default inductor; on the CPU it needs a C compiler)",
    )
    parser.add_argument(
        "--section",
        default=None,
        help="name of the --report section (default: bench-<suites>[-cuda][-<N>-threads with --threads])",
    )
    add_model_arguments(parser)


def report_target(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The Markdown file and the section that ``args`` (with ``--report``) write: ``--section``, or
    ``bench-<suites>[-<device type>][-<N>-threads]``."""
    device_type = "cpu" if args.device == "cpu" else "cuda"
    section = args.section or (
        "bench-"
        + "-".join(args.suites)
        + ("-search" if getattr(args, "search_only", False) else "")
        + ("-" + device_type if device_type != "cpu" else "")
        + (f"-{args.threads}-threads" if args.threads is not None else "")
    )
    return args.report, section


def report_command(args: argparse.Namespace) -> str:
    """The command line that writes this report section again (recorded at the head of the section)."""
    command = "timm-sage bench " + " ".join(args.suites) + f" --device {args.device} --repeats {args.repeats}"
    command += f" --warmup {args.warmup}" + (" --quick" if args.quick else "")
    command += " --search-only" if getattr(args, "search_only", False) else ""
    sources = getattr(args, "saliency_source", None)
    command += f" --saliency-source {' '.join(sources)}" if sources else ""
    command += f" --threads {args.threads}" if args.threads is not None else ""
    backend = getattr(args, "compile_backend", "inductor")
    command += f" --compile-backend {backend}" if "compile" in args.suites and backend != "inductor" else ""
    command += f" --plot-dir {args.plot_dir}" if args.plot_dir is not None and "scale" in args.suites else ""
    command += model_command(args)
    command += f" --report {args.report}" if args.report is not None else ""
    command += f" --section {args.section}" if args.section else ""
    return command


def run(args: argparse.Namespace) -> int:
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        raise ValueError(f"suites must be among {', '.join(SUITES)}; unknown: {', '.join(unknown)}")
    if args.device not in ("cpu", "cuda") and not str(args.device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    check_model_arguments(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    meta = {
        "machine": machine_description(device),
        "device": str(device),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "suites": list(args.suites),
        "quick": args.quick,
        "search_only": args.search_only,
        "finished": [],
        "failed": {},
    }
    rows: list[BenchRow] = []
    for suite in args.suites:
        # Each suite's rows reach the JSON as soon as it finishes (atomically), and a suite that fails is
        # reported and skipped: a crash late in a long run loses nothing measured before it.
        try:
            rows += _run_suite(suite, device, args)
            meta["finished"].append(suite)
        except Exception as error:  # reported, recorded in the JSON, and the run goes on
            meta["failed"][suite] = f"{type(error).__name__}: {error}"
            print(f"bench {suite} failed: {type(error).__name__}: {error}", file=sys.stderr)
        if args.json is not None:
            write_json_atomic(args.json, rows, meta)
    print(f"machine: {meta['machine']}; medians of {args.repeats} runs after {args.warmup} warm-up")
    print(format_table(rows))
    if args.json is not None:
        print(f"wrote {args.json}")
    if args.report is not None:
        report, section = report_target(args)
        body = f"Command: `{report_command(args)}`\n\nMachine: {meta['machine']}\n\n{format_table(rows)}"
        write_between_markers(report, body, section)
        print(f"wrote section {section} of {report}")
    return 0 if not meta["failed"] and all(math.isfinite(r.value) for r in rows) else 1


def _run_suite(suite: str, device: torch.device, args: argparse.Namespace) -> list[BenchRow]:
    if suite == "scale":
        plot = (args.plot_dir / "scale.png") if args.plot_dir else None
        return suite_scale(device, args.repeats, args.warmup, args.quick, plot)
    if suite == "mix":
        return suite_mix(device, args.repeats, args.warmup, args.quick, args.search_only)
    if suite == "compile":
        return suite_compile(device, args.repeats, args.warmup, args.quick, args.compile_backend)
    if suite == "step" and getattr(args, "model", None) is not None:
        return suite_model_step(device, args.repeats, args.warmup, args)
    sources = getattr(args, "saliency_source", None)
    if suite == "step" and sources:
        return suite_step(device, args.repeats, args.warmup, args.quick, tuple(sources))
    return globals()[f"suite_{suite}"](device, args.repeats, args.warmup, args.quick)
