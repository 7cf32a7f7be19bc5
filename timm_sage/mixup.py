"""SageMixup: ``timm.data.Mixup``'s interface with SAGE as a mixing mode, model in the loop.

``SageMixup(**mixup_args, mode="sage", model=model)`` replaces ``timm.data.Mixup(**mixup_args)``. Modes
other than ``"sage"`` are timm's own code, untouched. In ``"sage"`` mode every random draw comes from
the mixer's ``torch.Generator`` and the saliency comes from the bound model at every call.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from torch import nn

from timm_sage import _timm_compat, functional
from timm_sage.config import SAGE_DEFAULTS, SageConfig
from timm_sage.core import checks as _checks
from timm_sage.core import mixing
from timm_sage.core.clean import CleanGradientLostWarning, CleanGradients, LossWeight
from timm_sage.core.feature_saliency import FeatureForward, FeatureHead, read_head
from timm_sage.core.saliency import pass_size
from timm_sage.core.step import SageDraws, clean_term_step, sage_step
from timm_sage.functional import SageParams

# The plugin and every entry point import this module: a timm below the floor stops here, with one
# message naming its version and path.
_timm_compat.check_timm()

__all__ = [
    "CompiledSaliencyPass",
    "SageMixup",
    "SageParams",
    "SageMixRecord",
    "check_fixed_input_size",
    "check_pass_size",
    "compiled_wrapper",
    "fixed_input_size",
    "patch_multiple",
    "saliency_model",
    "unwrap_model",
]

MODES = ("batch", "pair", "elem", "half", "sage")
_D = SAGE_DEFAULTS  # the signature's defaults come from SageConfig, written once there


# With preset=..., a keyword the caller gave wins over the preset even when it equals SageConfig's
# default. To tell it from one left out, the signature's defaults are fresh instances of these subclasses
# (equal to, and shown as, SageConfig's defaults) that a caller cannot pass by writing a value; a None
# default cannot be marked, so None counts as not given (as in SageConfig.from_mapping).
class _DefaultFloat(float):
    __slots__ = ()


class _DefaultInt(int):
    __slots__ = ()


class _DefaultStr(str):
    __slots__ = ()


def _keyword_default(value: Any) -> Any:
    marks = {float: _DefaultFloat, int: _DefaultInt, str: _DefaultStr}
    return None if value is None else marks[type(value)](value)


_K = SimpleNamespace(**{name: _keyword_default(getattr(_D, name)) for name in SageConfig.names()})


@dataclass
class SageMixRecord:
    """What the last ``"sage"``-mode call did, for logging and tests (tensors on the batch's device).

    ``method`` is ``"sage"``, ``"cutmix"`` or ``"none"``; ``lam`` (B,) float32; ``perm`` (B,) long;
    ``translation`` (B, 2) long for SAGE (else None); ``saliency`` (B, H, W) float32 for SAGE (else None);
    ``clean_loss`` 0-dim float32 for SAGE; ``mixed`` 0-dim bool for SAGE (False: the saliency pass was
    not finite and the batch went through unmixed).
    """

    method: str
    lam: torch.Tensor
    perm: torch.Tensor
    translation: torch.Tensor | None = None
    saliency: torch.Tensor | None = None
    clean_loss: torch.Tensor | None = None
    mixed: torch.Tensor | None = None


def _known_wrappers() -> tuple[type, ...]:
    wrappers: list[type] = [nn.parallel.DistributedDataParallel, nn.DataParallel]
    try:
        from timm.utils import model_ema

        wrappers += [
            getattr(model_ema, name)
            for name in ("ModelEma", "ModelEmaV2", "ModelEmaV3")
            if hasattr(model_ema, name)
        ]
    except ImportError:  # pragma: no cover - timm always has it
        pass
    return tuple(wrappers)


def _optimized_module_type() -> type | None:
    eval_frame = getattr(getattr(torch, "_dynamo", None), "eval_frame", None)
    return getattr(eval_frame, "OptimizedModule", None)


def compiled_wrapper(model: nn.Module) -> nn.Module | None:
    """The outermost ``torch.compile`` OptimizedModule among ``model``'s known wrappers (DDP, DataParallel,
    EMA, compile, in any nesting), or None when nothing in the chain is compiled. Metadata only."""
    wrappers, optimized = _known_wrappers(), _optimized_module_type()
    for _ in range(16):
        if optimized is not None and isinstance(model, optimized):
            return model
        if not isinstance(model, wrappers):
            return None
        model = model.module
    return None


class _PassForward(nn.Module):
    """The plain module's forward under a code object of its own: compiled for the saliency pass, its
    dynamo cache entries (the pass's input size, an input that requires grad, parameters that may not)
    stay apart from those of the model's own ``forward``, so the training graph is compiled for the
    training batch only and stays static whatever ``saliency_scale`` / ``saliency_size`` are."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class CompiledSaliencyPass(nn.Module):
    """What the saliency pass calls when it is compiled: ``compiled`` (a compiled :class:`_PassForward` of
    ``module``), run eagerly from here. ``input_grad_only`` (the clean term does not come from this pass:
    ``update_ratio`` 1 or ``clean_term="in_batch"``): the parameters are marked as not requiring grad for
    the forward, so that AOTAutograd's backward computes the input gradient only (a compiled backward
    is one opaque function: without this it computes every weight gradient and the pass throws them
    away), and marked back at once; the autograd graph of the pass keeps what the forward saw.

    ``parameters()``, ``modules()``, ``train()`` and ``eval()`` are the plain module's (its submodule);
    ``training`` reads the plain module's mode."""

    def __init__(self, module: nn.Module, compiled: nn.Module, *, input_grad_only: bool) -> None:
        super().__init__()
        self.module = module
        self.__dict__["compiled"] = compiled  # not a submodule: the same parameters, registered once
        self.input_grad_only = input_grad_only

    @property
    def training(self) -> bool:  # type: ignore[override]
        return self.__dict__["module"].training if "module" in self.__dict__ else True

    @training.setter
    def training(self, mode: bool) -> None:  # nn.Module.train() sets it, then sets the plain module's
        pass

    def __getattr__(self, name: str) -> Any:
        if name == "module":
            return self._modules["module"]
        if name in ("_orig_mod", "dynamo_ctx"):  # of the compiled pass (its backend and mode)
            compiled = self.__dict__["compiled"]
            return compiled._orig_mod.module if name == "_orig_mod" else compiled.dynamo_ctx
        return super().__getattr__(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self.__dict__["compiled"]
        if not self.input_grad_only or not torch.is_grad_enabled():
            return compiled(x)
        frozen = [p for p in self.module.parameters() if p.requires_grad]
        for param in frozen:
            param.requires_grad_(False)
        try:
            return compiled(x)
        finally:
            for param in frozen:
                param.requires_grad_(True)


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one (height, width) ``model`` accepts, or None when it takes other sizes: a timm patch
    embedding (ViT, DeiT, MLP-Mixer, ...) built with ``strict_img_size`` (timm's default unless the
    model is created with ``dynamic_img_size=True``) asserts that the input is exactly its ``img_size``.
    Read from the modules' attributes, not from a timm version."""
    for module in model.modules():
        size = getattr(module, "img_size", None)
        if getattr(module, "strict_img_size", False) is True and isinstance(size, (tuple, list)):
            if len(size) == 2 and all(isinstance(side, int) for side in size):
                return (int(size[0]), int(size[1]))
    return None


def patch_multiple(model: nn.Module) -> tuple[int, int] | None:
    """The (height, width) multiple that ``model``'s inputs must be, or None: a timm patch embedding that
    takes other sizes (``dynamic_img_size=True``) but does not pad them (``dynamic_img_pad=False``)
    asserts that each side is a multiple of its ``patch_size``."""
    for module in model.modules():
        patch = getattr(module, "patch_size", None)
        unpadded = getattr(module, "dynamic_img_pad", None) is False
        dynamic = getattr(module, "strict_img_size", None) is False
        if unpadded and dynamic and isinstance(patch, (tuple, list)):
            if len(patch) == 2 and all(isinstance(side, int) for side in patch):
                return (int(patch[0]), int(patch[1]))
    return None


def check_pass_size(model: nn.Module, config: SageConfig, height: int, width: int) -> None:
    """ValueError naming the lever and the fix when the saliency pass would run ``model`` at a size its
    patch embedding refuses (not a multiple of its patch size, :func:`patch_multiple`), instead of timm's
    ``AssertionError: Input height (56) should be divisible by patch size (16)`` inside the pass."""
    multiple = patch_multiple(model)
    if multiple is None:
        return
    small = pass_size(height, width, scale=config.saliency_scale, size=config.saliency_size)
    if small == (height, width) or (small[0] % multiple[0] == 0 and small[1] % multiple[1] == 0):
        return
    lever = (
        f"saliency_size={config.saliency_size}" if config.saliency_size is not None
        else f"saliency_scale={config.saliency_scale}"
    )  # fmt: skip
    raise ValueError(
        f"{lever} runs the saliency pass of {height}x{width} images at {small[0]}x{small[1]}, which "
        f"{type(model).__name__} refuses (not a multiple of its patch size {multiple[0]}x{multiple[1]}); "
        "create the model with dynamic_img_pad=True as well as dynamic_img_size=True (train.py: "
        "--model-kwargs dynamic_img_size=True dynamic_img_pad=True), or choose a lever whose size is a "
        "multiple of the patch size"
    )


def check_fixed_input_size(model: nn.Module, config: SageConfig) -> None:
    """ValueError naming the fix when a cheap-saliency lever would run ``model`` at a size it refuses: a
    model with a fixed input size (:func:`fixed_input_size`) with ``saliency_scale < 1``, or with a
    ``saliency_size`` below its shorter side. At bind time, before timm's ``AssertionError: Input height
    (16) doesn't match model (32)`` in the first step."""
    fixed = fixed_input_size(model)
    if fixed is None:
        return
    if config.saliency_scale < 1:
        lever, off = f"saliency_scale={config.saliency_scale}", "saliency_scale 1"
    elif config.saliency_size is not None and min(fixed) > config.saliency_size:
        lever, off = f"saliency_size={config.saliency_size}", "saliency_size None"
    else:
        return
    raise ValueError(
        f"{lever} runs the saliency pass at a smaller size, but {type(model).__name__} accepts only "
        f"{fixed[0]}x{fixed[1]} inputs (its patch embedding has a fixed img_size); create the model with "
        "dynamic_img_size=True (timm.create_model(name, dynamic_img_size=True); timm's train.py: "
        f"--model-kwargs dynamic_img_size=True), which resamples its position embeddings to the input, "
        f"or set {off}"
    )


def saliency_model(
    model: nn.Module, config: SageConfig, compile_options: dict[str, Any] | None = None
) -> nn.Module:
    """The module the saliency pass calls: the plain module inside ``model``'s wrappers (never DDP's
    forward, whose reducer must not see the pass), compiled when ``config.saliency_compile`` is "follow"
    and the model is compiled: with the compiler settings of ``model``'s own OptimizedModule (its
    ``dynamo_ctx``: backend, mode), else with ``torch.compile(..., **compile_options)`` when given (the
    timm plugin and ``timm-sage train`` pass ``--torchcompile``'s backend and mode: they compile the model
    after the mixer sees it). Compiled, it is a :class:`CompiledSaliencyPass`: the plain module's
    parameters and buffers, through a thin module of its own (its own dynamo cache entries: the training
    graph never sees the pass's input), with weight gradients compiled only when the clean term comes from
    the pass (``update_ratio < 1`` with ``clean_term="separate_pass"``)."""
    plain = unwrap_model(model)
    check_fixed_input_size(plain, config)
    if config.saliency_compile == "eager":
        return plain
    compiled = compiled_wrapper(model)
    if compiled is not None:
        view = type(compiled)(_PassForward(plain), compiled.dynamo_ctx)
    elif compile_options:
        view = torch.compile(_PassForward(plain), **compile_options)
    else:
        return plain
    input_grad_only = config.update_ratio == 1 or config.clean_term == "in_batch"
    return CompiledSaliencyPass(plain, view, input_grad_only=input_grad_only)


def feature_model(
    model: nn.Module, config: SageConfig, compile_options: dict[str, Any] | None = None
) -> nn.Module:
    """What a forward-only saliency pass calls: ``forward_features`` of the plain module inside ``model``'s
    wrappers as a module (:class:`~timm_sage.core.feature_saliency.FeatureForward`), compiled by the rule
    of :func:`saliency_model` (the model's own compiler settings, or ``compile_options``, with
    ``saliency_compile="follow"``)."""
    plain = FeatureForward(unwrap_model(model))
    if config.saliency_compile == "eager":
        return plain
    compiled = compiled_wrapper(model)
    if compiled is not None:
        return type(compiled)(plain, compiled.dynamo_ctx)
    if compile_options:
        return torch.compile(plain, **compile_options)
    return plain


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside known wrappers, matched by type: DistributedDataParallel and DataParallel
    (``.module``), ``torch.compile``'s OptimizedModule (``._orig_mod``) and timm's ``ModelEma``,
    ``ModelEmaV2`` and ``ModelEmaV3`` (``.module``). Any other model is returned as it is, even one
    that owns a submodule called ``module`` or ``ema``."""
    wrappers, optimized = _known_wrappers(), _optimized_module_type()
    for _ in range(16):
        if optimized is not None and isinstance(model, optimized):
            model = model._orig_mod
        elif isinstance(model, wrappers):
            model = model.module
        else:
            break
    return model


def _check_grad_scaler(grad_scaler: Any) -> None:
    """The deprecated ``grad_scaler`` argument: still type-checked (a torch GradScaler or timm's
    NativeScaler, which wraps one), then a DeprecationWarning: the clean gradient now travels through the
    caller's own (scaled) backward, so the mixer needs no scaler."""
    if grad_scaler is None:
        return
    inner = getattr(grad_scaler, "_scaler", None)  # timm's NativeScaler wraps a GradScaler
    scale = getattr(grad_scaler, "scale", None) or getattr(inner, "scale", None)
    if not callable(scale):
        raise TypeError(
            "grad_scaler must be a torch.amp.GradScaler or timm's NativeScaler, got "
            f"{type(grad_scaler).__name__}"
        )
    warnings.warn(
        "SageMixup's grad_scaler is deprecated and ignored: the clean gradient (update_ratio < 1) enters "
        "through your own backward of loss * mixup_fn.loss_weight, scaled by the GradScaler like the rest; "
        "drop the argument",
        DeprecationWarning,
        stacklevel=3,
    )


# How many calls a clean term whose weight or weighted loss is still alive may wait for its backward
# (a loop that mixes ahead of its backward) before the mixer counts it as lost and frees its gradients.
_WATCHED_TERMS = 4


class SageMixup(Mixup):
    """Drop-in for ``timm.data.Mixup`` with ``mode="sage"`` (docs/algorithm.md).

    timm's arguments keep their names, defaults and meaning. In ``"sage"`` mode SAGE takes the place of
    mixup (``mixup_alpha`` is the Beta parameter of the prior); with ``cutmix_alpha > 0`` too,
    ``switch_prob`` picks CutMix or SAGE per batch, as timm picks CutMix or mixup.

    The SAGE options are those of :class:`timm_sage.SageConfig` (``upper_lambda``, ``rand_pos``,
    ``update_ratio``, ``search_size``, ``saliency_loss``, ``saliency_reduce``, ``blur_kernel``,
    ``blur_sigma``, ``saliency_scale``, ``rearrangement``, ``saliency_mode``, ``saliency_size``,
    ``clean_term``, ``saliency_compile``, ``saliency_source``, ``saliency_model``), as keywords or as
    ``config=SageConfig(...)``;
    they are validated here, once, and read back as attributes (``mixer.upper_lambda``).
    ``preset="clutter"`` starts from a named setting of :data:`timm_sage.config.SAGE_PRESETS` instead of
    SageConfig's defaults; the keywords given win over the preset's values, even one equal to
    SageConfig's default (None counts as not given). ``preset`` with ``config`` is a ValueError.

    ``update_ratio`` r trains on the paper's loss ``(1 - r) * l_clean + r * l_mixed`` with no lr change.
    The contract: multiply the loss of the returned batch by :attr:`loss_weight`, then backward as usual::

        x, soft_target = mixup_fn(x, y)
        loss = criterion(model(x), soft_target) * mixup_fn.loss_weight

    The call writes no ``.grad``: the saliency pass's backward computes ``(1 - r) * d l_clean / d params``
    and :attr:`loss_weight` (value r) carries it into the backward of that product, scaled like the loss
    (GradScaler, accumulation divisor) and all-reduced with it under DDP, so ``zero_grad()`` may sit
    anywhere in the loop. A call that finds the previous call's clean gradient never reached a backward
    (the loss was not multiplied) warns once (:class:`~timm_sage.core.clean.CleanGradientLostWarning`).

    Other options:
        model: the live model (or bind later with :meth:`bind`); saliency is recomputed from it at
            every call. DDP, DataParallel, ``torch.compile`` and timm EMA wrappers are unwrapped
            (:attr:`model` is the plain module). The saliency pass runs :attr:`saliency_module`: the
            plain module, compiled with the model's own compiler settings when the model is compiled
            and ``saliency_compile`` is "follow" (the default; "eager" runs it eagerly).
        compile_options: ``torch.compile`` keywords (``backend``, ``mode``) for a model that is
            compiled after it is bound (timm's ``train.py --torchcompile``, which the plugin passes on):
            with ``saliency_compile="follow"`` the saliency pass then runs
            ``torch.compile(plain, **compile_options)``. None: follow the bound model only.
        seed / generator: source of the SAGE-mode random draws (a CPU torch generator for the
            permutation and candidates, a numpy generator seeded from it for the Beta prior and CutMix
            boxes). A CUDA generator is a ValueError: the draws are made on the host.
        coin_seed: seed of the per-batch choice of method (mix or not with ``prob``, CutMix or SAGE with
            ``switch_prob``), drawn from its own generator; default: the generator's seed. Under DDP
            give every rank the same ``coin_seed`` and its own ``seed``: all ranks then take the same
            method at every step (the saliency pass's SyncBatchNorm needs every rank) while partners
            and candidates stay per rank. The timm plugin does this (train.py's ``--seed``).
        ema_model: the EMA copy of the model that the caller keeps updated (timm's ``ModelEmaV3``), the
            saliency model of ``saliency_model="ema"`` (required then; bind it with :meth:`bind`'s
            ``ema_model=`` when the model comes later). :attr:`saliency_module` is the module the
            gradient pass calls (before 0.3 it was the attribute ``saliency_model``, now the option's name).
        amp_dtype: run the saliency pass under ``torch.autocast`` with this dtype.
        grad_scaler: deprecated and ignored (a DeprecationWarning): the clean gradient is scaled by the
            caller's own scaled backward.

    A sage-mode call with a bound model reads no device value back to the host after its first call
    (which checks the labels once): the non-finite saliency fallback is decided on the device. On it,
    the batch goes through unmixed (``last.mixed`` is False, ``lam`` 1), the clean gradient carried is zero,
    :attr:`loss_weight` is 1 and :attr:`skipped_batches` (a device tensor) counts it. Without a bound
    model (``saliency=`` given) every value is checked at every call.
    """

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        multi_label: bool = False,
        *,
        model: nn.Module | None = None,
        config: SageConfig | None = None,
        preset: str | None = None,
        upper_lambda: float = _K.upper_lambda,
        rand_pos: float = _K.rand_pos,
        update_ratio: float = _K.update_ratio,
        search_size: int | None = _K.search_size,
        saliency_loss: str = _K.saliency_loss,
        saliency_reduce: str = _K.saliency_reduce,
        blur_kernel: int = _K.blur_kernel,
        blur_sigma: float = _K.blur_sigma,
        saliency_scale: float = _K.saliency_scale,
        rearrangement: str = _K.rearrangement,
        saliency_mode: str = _K.saliency_mode,
        saliency_size: int | None = _K.saliency_size,
        clean_term: str = _K.clean_term,
        saliency_compile: str = _K.saliency_compile,
        saliency_source: str = _K.saliency_source,
        saliency_model: str = _K.saliency_model,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        coin_seed: int | None = None,
        amp_dtype: torch.dtype | None = None,
        grad_scaler: Any = None,
        compile_options: dict[str, Any] | None = None,
        ema_model: nn.Module | None = None,
    ) -> None:
        _checks.check_choice("mode", mode, MODES)
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise ValueError(f"cutmix_minmax must be (min, max), got {cutmix_minmax!r}")
            low, high = (_checks.check_fraction("cutmix_minmax", v) for v in cutmix_minmax)
            if not low < high:
                raise ValueError(f"cutmix_minmax must have min < max, got {tuple(cutmix_minmax)}")
        timm_arguments = dict(
            mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, cutmix_minmax=cutmix_minmax, prob=prob,
            switch_prob=switch_prob, mode=mode, correct_lam=correct_lam, label_smoothing=label_smoothing,
            num_classes=num_classes,
        )  # fmt: skip
        if _timm_compat.MIXUP_TAKES_MULTI_LABEL:
            timm_arguments["multi_label"] = multi_label
        elif multi_label and mode != "sage":
            raise ValueError(
                f"multi_label=True in mode {mode!r} runs timm's own Mixup, and the timm imported here has "
                f"no multi_label ({_timm_compat.describe_timm()}); use mode='sage' (which mixes multi-label "
                "targets itself) or a timm whose Mixup takes multi_label (1.0.31 and later)"
            )
        super().__init__(**timm_arguments)
        self.multi_label = bool(multi_label)  # sage mode reads it, whichever timm
        _checks.check_fraction("mixup_alpha", mixup_alpha, high=math.inf)
        _checks.check_fraction("prob", prob)
        _checks.check_fraction("switch_prob", switch_prob)
        _checks.check_fraction("label_smoothing", label_smoothing)
        _checks.check_positive_int("num_classes", num_classes)
        if mode == "sage" and mixup_alpha <= 0:
            raise ValueError(
                "mixup_alpha must be > 0 with mode='sage': it is the Beta parameter of SAGE's prior"
            )
        passed = dict(
            upper_lambda=upper_lambda, rand_pos=rand_pos, update_ratio=update_ratio, search_size=search_size,
            saliency_loss=saliency_loss, saliency_reduce=saliency_reduce, blur_kernel=blur_kernel,
            blur_sigma=blur_sigma, saliency_scale=saliency_scale, rearrangement=rearrangement,
            saliency_mode=saliency_mode, saliency_size=saliency_size, clean_term=clean_term,
            saliency_compile=saliency_compile, saliency_source=saliency_source, saliency_model=saliency_model,
        )  # fmt: skip
        # The keywords the caller gave (not the signature's marked defaults, not None), and every keyword
        # as a plain value.
        given = {n: v for n, v in passed.items() if v is not getattr(_K, n) and v is not None}
        keywords = {n: getattr(_D, n) if v is getattr(_K, n) else v for n, v in passed.items()}
        if preset is not None:
            if config is not None:
                raise ValueError(
                    "pass either config= or preset=, not both (config=SageConfig.from_preset(preset, ...) "
                    "combines them)"
                )
            config = SageConfig.from_preset(preset, **given)
        elif config is None:
            config = SageConfig(**keywords)
        elif not isinstance(config, SageConfig):
            raise TypeError(f"config must be a SageConfig, got {type(config).__name__}")
        elif any(keywords[name] != getattr(_D, name) for name in keywords):
            raise ValueError(
                "pass the SAGE options either as config=SageConfig(...) or as keywords, not both"
            )
        self.config = config
        if amp_dtype is not None and not isinstance(amp_dtype, torch.dtype):
            raise TypeError(f"amp_dtype must be a torch.dtype or None, got {type(amp_dtype).__name__}")
        self.amp_dtype = amp_dtype
        _checks.check_host_generator("generator", generator)
        if coin_seed is not None:
            _checks.check_positive_int("coin_seed", coin_seed, minimum=0)
        if generator is None:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(int(seed))
            else:
                generator.seed()
        elif seed is not None:
            raise ValueError("pass either seed or generator, not both")
        self.generator = generator
        # Host-side draws (coin flips, Beta, CutMix boxes) from numpy, seeded once from the generator's
        # seed: drawing them never reads a tensor back.
        self.host_rng = np.random.default_rng([generator.initial_seed(), 0x5A6E])
        # The per-batch method coins from their own stream, so that ranks given one coin_seed agree.
        self.coin_rng = np.random.default_rng(
            [coin_seed if coin_seed is not None else generator.initial_seed(), 0xC014]
        )
        _check_grad_scaler(grad_scaler)
        if compile_options is not None and not isinstance(compile_options, dict):
            raise TypeError(
                f"compile_options must be a dict of torch.compile keywords or None, got "
                f"{type(compile_options).__name__}"
            )
        self.compile_options = dict(compile_options) if compile_options else None
        self.model: nn.Module | None = None
        self.saliency_module: nn.Module | None = None
        self._pass_size_checked: torch.Size | None = None
        self.ema_model: nn.Module | None = None
        self.feature_head: FeatureHead | None = None
        if model is not None:
            self.bind(model, ema_model=ema_model)
        elif ema_model is not None:
            raise ValueError(
                "ema_model needs the live model too: pass model=... with it, or bind(model, ema_model=...)"
            )
        self.last: SageMixRecord | None = None
        self._values_checked = False
        self.loss_weight: float | torch.Tensor = 1.0
        self.skipped_batches: int | torch.Tensor = 0
        # (weak reference to a LossWeight, its clean gradients) of recent calls, until a backward consumed
        # them or nothing can any more (see _watch_clean_terms); the warning is given once per mixer.
        self._clean_terms: list[tuple[weakref.ref, CleanGradients, int]] = []  # (weight, gradients, call)
        self._calls = 0
        self._warned_lost = False
        self._spare_buffer: torch.Tensor | None = None  # a released clean-gradient buffer, for reuse

    def __getattr__(self, name: str) -> Any:
        # SAGE options read back as attributes (mixer.upper_lambda), from the one config.
        if name != "config" and name in SageConfig.names() and "config" in self.__dict__:
            return getattr(self.__dict__["config"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- binding -------------------------------------------------------------------------------
    def bind(
        self, model: nn.Module, *, grad_scaler: Any = None, ema_model: nn.Module | None = None
    ) -> SageMixup:
        """Bind the live model whose saliency drives mixing (wrappers are stripped); returns self.
        ``grad_scaler`` is deprecated and ignored (see the class).

        ``ema_model``: the EMA copy of the model that the user keeps updated (timm's ``ModelEmaV3``, or
        its ``.module``), the saliency model of ``saliency_model="ema"`` (required then). With
        ``saliency_source`` "cam" or "features" the saliency model's head is read here: a model without
        ``forward_features`` (or, for "cam", a linear classifier after the pool) is a ValueError naming
        what is missing."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if ema_model is not None and not isinstance(ema_model, nn.Module):
            raise TypeError(
                f"ema_model must be a torch.nn.Module (timm's ModelEmaV3), got {type(ema_model).__name__}"
            )
        _check_grad_scaler(grad_scaler)
        # The saliency options matter in mode "sage" only: timm's modes run no saliency pass.
        use_ema = self.mode == "sage" and self.config.saliency_model == "ema"
        if use_ema and ema_model is None:
            raise ValueError(
                "saliency_model='ema' takes the saliency from the EMA copy of the model: pass it as "
                "ema_model=... (timm's ModelEmaV3 that your loop updates), or use saliency_model='live'"
            )
        source = ema_model if use_ema else model
        head = None
        if self.mode == "sage" and self.config.saliency_source != "gradient":
            features = feature_model(source, self.config, self.compile_options)
            head = read_head(unwrap_model(source), self.config.saliency_source, features)
        self.model = unwrap_model(model)
        self.ema_model = unwrap_model(ema_model) if ema_model is not None else None
        self.saliency_module = saliency_model(source, self.config, self.compile_options)
        self.feature_head = head
        self._pass_size_checked = None
        return self

    @property
    def clean_grad_weight(self) -> float:
        """Weight ``1 - r`` of the clean loss's parameter gradient that :attr:`loss_weight` carries into
        the caller's backward (0 with ``r == 1``, and with ``clean_term="in_batch"``, whose clean term is
        in the returned batch)."""
        if self.config.clean_term == "in_batch":
            return 0.0
        return 1.0 - self.config.update_ratio

    # -- random draws and their state ------------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        """Every generator's state (a uint8 tensor and plain ints): checkpoint-safe under weights_only."""
        return {
            "generator": self.generator.get_state(),
            "host": self.host_rng.bit_generator.state,
            "coin": self.coin_rng.bit_generator.state,
        }

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.host_rng.bit_generator.state = state["host"]
        if "coin" in state:  # checkpoints of 0.1 have none: the coins then go on from the seed
            self.coin_rng.bit_generator.state = state["coin"]

    def draw_sage_params(
        self, batch: int, height: int, width: int, rng: np.random.Generator | None = None
    ) -> SageParams:
        """Draw ``perm``, ``prior``, candidate ``translations`` and, with ``clean_term="in_batch"`` and
        ``update_ratio < 1``, the ``clean`` images for one batch (CPU tensors)."""
        in_batch = self.config.clean_term == "in_batch"
        return functional.sample_sage_params(
            batch,
            height,
            width,
            alpha=self.mixup_alpha,
            upper_lambda=self.config.upper_lambda,
            rand_pos=self.config.rand_pos,
            generator=self.generator,
            search_size=self.config.search_size,
            rng=rng if rng is not None else self.host_rng,
            rearrangement=self.config.rearrangement,
            clean_share=1.0 - self.config.update_ratio if in_batch else 0.0,
        )

    # -- the call ------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor | None = None):
        """Mix a batch: ``x`` (B, C, H, W) float, ``target`` (B,) labels -> (x, soft target (B, C)).

        In timm's modes this is timm's ``Mixup.__call__`` (mixing ``x`` in place). In ``"sage"`` mode
        the mixed images are a new tensor; ``saliency`` (B, H, W) may be given instead of a bound model
        (then it is checked, and :attr:`loss_weight` is 1: no clean pass ran). After every call
        :attr:`loss_weight` is the weight the caller's loss on the returned batch must take.
        """
        self.loss_weight = 1.0
        self._calls += 1
        if self._clean_terms:
            self._watch_clean_terms()
        if self.mode != "sage":
            return self._with_clean_term(x, target, lambda: Mixup.__call__(self, x, target))
        _checks.check_tensor("x", x)
        _checks.check_floating("x", x)
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        batch = x.shape[0]
        if batch == 0:
            raise ValueError("x is an empty batch (B = 0); there is nothing to mix")
        rng, coin = self.host_rng, self.coin_rng
        use_mixing = self.mixup_enabled and coin.random() < self.mix_prob
        use_cutmix = (
            use_mixing
            and self.cutmix_alpha > 0
            and (self.mixup_alpha <= 0 or coin.random() < self.switch_prob)
        )
        # A mixer bound to a live model is the training hot path: shapes and dtypes are checked, values
        # are not (no host reads). Without one (saliency given, a data pipeline) every value is checked.
        checked = self.model is None or saliency is not None
        if not use_mixing:
            identity = torch.arange(batch, device=x.device)
            ones = torch.ones(batch, device=x.device)
            self.last = SageMixRecord("none", ones, identity)
            return x, self._target(target, identity, ones, checked)
        if use_cutmix:
            return self._with_clean_term(x, target, lambda: self._cutmix(x, target, rng, checked))
        draws = self.draw_sage_params(batch, x.shape[-2], x.shape[-1], rng)
        if saliency is not None:
            out = functional.sage_mix(
                x, saliency, perm=draws.perm, prior=draws.prior, translations=draws.translations,
                search_size=self.config.search_size,
            )  # fmt: skip
            perm = draws.perm.to(x.device)
            self.last = SageMixRecord("sage", out.lam, perm, out.translation, saliency)
            return out.images, self._target(target, perm, out.lam, checked)
        if self.model is None:
            raise ValueError(
                "SageMixup(mode='sage') needs the live model: pass model=... or call .bind(model), "
                "or pass saliency=... to the call"
            )
        self.config.check_image_size(x.shape[-2], x.shape[-1])
        if self._pass_size_checked != x.shape[-2:]:  # once per image size: metadata only
            check_pass_size(self.model, self.config, x.shape[-2], x.shape[-1])
            self._pass_size_checked = x.shape[-2:]
        dense = self._shaped_target(target, batch)
        if not self._values_checked:
            # The first call checks the values once (labels against num_classes, soft targets), so a
            # misconfigured run fails at once with a clear error; later calls read nothing back.
            functional.sage_target(
                dense, perm=torch.arange(batch, device=dense.device), lam=1.0, num_classes=self.num_classes
            )
            if (
                self.config.saliency_loss == "bce_softmax"
                and dense.is_floating_point()
                and bool((dense > 1).any())
            ):
                raise ValueError("soft target values must lie in [0, 1] for saliency_loss='bce_softmax'")
            if self.ema_model is not None and self.config.saliency_model == "ema":
                device = next((p.device for p in self.ema_model.parameters()), x.device)
                if device != x.device:
                    raise ValueError(
                        f"saliency_model='ema': the EMA copy is on {device} and the batch on {x.device}; "
                        "keep the EMA on the training device (no model_ema_force_cpu)"
                    )
            self._values_checked = True
        spare, self._spare_buffer = self._spare_buffer, None
        result = sage_step(
            self.saliency_module, x, dense, SageDraws(*draws), self.config, num_classes=self.num_classes,
            label_smoothing=0.0 if dense.is_floating_point() else self.label_smoothing,
            amp_dtype=self.amp_dtype, clean_buffer=spare, head=self.feature_head,
        )  # fmt: skip
        self.skipped_batches = self.skipped_batches + (~result.mixed).long()
        self.loss_weight = result.loss_weight
        if isinstance(result.loss_weight, LossWeight):
            self._clean_terms.append((weakref.ref(result.loss_weight), result.loss_weight.clean, self._calls))
        self.last = SageMixRecord(
            "sage",
            result.lam,
            result.perm,
            result.translation,
            result.saliency,
            result.clean_loss,
            result.mixed,
        )
        return result.images, result.target

    def _with_clean_term(self, x: torch.Tensor, target: torch.Tensor, mix: Any):
        """A mix other than SAGE's (timm's modes; CutMix batches of the sage mode's switch) with the clean
        term of ``update_ratio`` r < 1, as SAGE trains it: ``clean_term="separate_pass"`` runs SAGE's clean
        pass (:func:`~timm_sage.core.step.clean_term_step`, the same forward and backward, the same cost)
        before ``mix()`` and returns its gradients in :attr:`loss_weight` (value r); ``"in_batch"`` leaves
        ``round((1 - r) * B)`` images of the batch unmixed, with their own (smoothed) labels, drawn from
        this mixer's generator. With r = 1, or mixing switched off, it is ``mix()``."""
        config = self.config
        if config.update_ratio >= 1 or not self.mixup_enabled:
            return mix()
        batch = x.shape[0]
        if config.clean_term == "in_batch":
            share = round((1.0 - config.update_ratio) * batch)
            clean = torch.randperm(batch, generator=self.generator)[:share]
            if clean.numel() == 0:
                return mix()
            clean = clean.to(x.device)
            kept, own = x[clean].clone(), target[clean]  # timm's modes mix x in place
            images, soft = mix()
            images[clean] = kept
            ones = torch.ones(clean.shape[0], device=x.device)
            soft[clean] = self._target(own, torch.arange(clean.shape[0], device=x.device), ones, False)
            return images, soft
        if self.model is None:
            raise ValueError(
                f"update_ratio={config.update_ratio} < 1 with clean_term='separate_pass' trains on a clean "
                "pass of the live model: pass model=... or call .bind(model), or use clean_term='in_batch'"
            )
        spare, self._spare_buffer = self._spare_buffer, None
        # saliency_module is the live model's here: SageConfig refuses separate_pass with the EMA's saliency.
        weight, _ = clean_term_step(
            self.saliency_module, x, self._shaped_target(target, batch), config, amp_dtype=self.amp_dtype,
            clean_buffer=spare,
        )  # fmt: skip
        images, soft = mix()
        self.loss_weight = weight
        if isinstance(weight, LossWeight):
            self._clean_terms.append((weakref.ref(weight), weight.clean, self._calls))
        return images, soft

    def _watch_clean_terms(self) -> None:
        """At each call: release the clean gradients a backward consumed (their buffer is reused by this
        call's step); warn (once) about any that no backward can reach any more: not consumed, its
        :attr:`loss_weight` gone (the mixer dropped its own reference before this check) and no
        weighted product alive. A term whose weight or product is still held (a loop that mixes one
        batch ahead of its backward) is looked at again at the next calls, up to ``_WATCHED_TERMS`` of
        them (a weight kept for logging must not hold a parameter-sized buffer for ever)."""
        watched = []
        for weight, clean, call in self._clean_terms:
            alive = weight() is not None or clean.products > 0
            if not clean.consumed and alive and self._calls - call <= _WATCHED_TERMS:
                watched.append((weight, clean, call))
                continue
            # Consumed, or lost: nothing can use these gradients any more; the next step reuses the buffer.
            buffer = clean.release()
            if buffer is not None:
                self._spare_buffer = buffer
            if not clean.consumed and not self._warned_lost:
                self._warned_lost = True
                warnings.warn(
                    f"SageMixup: the clean-loss gradient of an earlier call (update_ratio="
                    f"{self.config.update_ratio} < 1) never reached a backward pass, so training misses "
                    "the (1 - r) * l_clean term; multiply the loss of the mixed batch by the mixer's weight "
                    "before backward(): loss = loss * mixup_fn.loss_weight",
                    CleanGradientLostWarning,
                    stacklevel=3,
                )
        self._clean_terms = watched

    def _shaped_target(self, target: torch.Tensor, batch: int) -> torch.Tensor:
        """(B,) labels, or (B, num_classes) soft targets used as given; multi-label targets become smoothed
        dense rows as timm's Mixup makes them. Metadata checks only."""
        _checks.check_tensor("target", target)
        if self.multi_label:
            if target.shape != (batch, self.num_classes):
                raise ValueError(f"multi_label targets must have shape ({batch}, {self.num_classes})")
            return target.float() * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        if target.is_floating_point():
            if target.shape != (batch, self.num_classes):
                raise ValueError(
                    f"soft target must have shape ({batch}, {self.num_classes}), got {tuple(target.shape)}"
                )
        elif target.shape != (batch,):
            raise ValueError(
                f"target must be ({batch},) labels or ({batch}, {self.num_classes}) soft targets, "
                f"got {tuple(target.shape)}"
            )
        return target

    def _target(
        self, target: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, checked: bool
    ) -> torch.Tensor:
        """Soft targets of a mix: checked (:func:`timm_sage.functional.sage_target`) or, on the hot path,
        the kernel alone."""
        dense = self._shaped_target(target, perm.shape[0])
        smoothing = 0.0 if dense.is_floating_point() else self.label_smoothing
        if checked:
            return functional.sage_target(
                dense,
                perm=perm,
                lam=lam.to(dense.device),
                num_classes=self.num_classes,
                label_smoothing=smoothing,
            )
        return mixing.mix_targets(
            dense, perm.to(dense.device), lam.to(dense.device), self.num_classes, smoothing
        )

    def _cutmix(self, x: torch.Tensor, target: torch.Tensor, rng: np.random.Generator, checked: bool):
        """timm's batch-mode CutMix (partner = flipped batch), with draws from this mixer's generator."""
        batch, _, height, width = x.shape
        if self.cutmix_minmax is not None:
            low, high = self.cutmix_minmax
            cut_h = int(rng.integers(int(height * low), int(height * high)))
            cut_w = int(rng.integers(int(width * low), int(width * high)))
            top, left = int(rng.integers(0, height - cut_h + 1)), int(rng.integers(0, width - cut_w + 1))
            bottom, right = top + cut_h, left + cut_w
        else:
            lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            ratio = math.sqrt(1.0 - lam)
            cut_h, cut_w = int(height * ratio), int(width * ratio)
            cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
            top, bottom = np.clip([cy - cut_h // 2, cy + (cut_h + 1) // 2], 0, height)
            left, right = np.clip([cx - cut_w // 2, cx + (cut_w + 1) // 2], 0, width)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
        perm = torch.arange(batch - 1, -1, -1, device=x.device)
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        lam_t = torch.full((batch,), float(lam), device=x.device)
        self.last = SageMixRecord("cutmix", lam_t, perm)
        return mixed, self._target(target, perm, lam_t, checked)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
            f"label_smoothing={self.label_smoothing}, num_classes={self.num_classes}, "
            f"config={self.config!r}, bound={self.model is not None})"
        )
