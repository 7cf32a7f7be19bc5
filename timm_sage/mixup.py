"""SageMixup: ``timm.data.Mixup``'s interface with SAGE as a mixing mode, model in the loop.

``SageMixup(**mixup_args, mode="sage", model=model)`` replaces ``timm.data.Mixup(**mixup_args)``. Modes
other than ``"sage"`` are timm's own code, untouched. In ``"sage"`` mode every random draw comes from
the mixer's ``torch.Generator`` and the saliency comes from the bound model at every call.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from torch import nn

from timm_sage import _checks, functional
from timm_sage.functional import SageParams

__all__ = ["SageMixup", "SageParams", "SageMixRecord", "unwrap_model"]

MODES = ("batch", "pair", "elem", "half", "sage")


@dataclass
class SageMixRecord:
    """What the last ``"sage"``-mode call did, for logging and tests.

    ``method`` is ``"sage"``, ``"cutmix"`` or ``"none"``; ``lam`` (B,) float32; ``perm`` (B,) long;
    ``translation`` (B, 2) long for SAGE (else None); ``saliency`` (B, H, W) float32 for SAGE (else None).
    """

    method: str
    lam: torch.Tensor
    perm: torch.Tensor
    translation: torch.Tensor | None = None
    saliency: torch.Tensor | None = None
    clean_loss: float | None = None


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel/DataParallel (``.module``), ``torch.compile`` (``._orig_mod``)
    and EMA wrappers (timm's ``ModelEma*`` keep the averaged copy in ``.module`` / ``.ema``)."""
    seen = 0
    while seen < 16:
        seen += 1
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "ema", None), nn.Module):
            model = model.ema
        else:
            break
    return model


def _scale_function(grad_scaler: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``GradScaler.scale`` of a torch GradScaler or of timm's NativeScaler (which wraps one)."""
    if grad_scaler is None:
        return None
    if hasattr(grad_scaler, "scale") and callable(grad_scaler.scale):
        return grad_scaler.scale
    inner = getattr(grad_scaler, "_scaler", None)
    if inner is not None and callable(getattr(inner, "scale", None)):
        return inner.scale
    raise TypeError(
        f"grad_scaler must be a torch.amp.GradScaler or timm's NativeScaler, got {type(grad_scaler).__name__}"
    )


def _uses_channels_last(model: nn.Module) -> bool:
    for param in model.parameters():
        if param.ndim == 4:
            return param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
    return False


class SageMixup(Mixup):
    """Drop-in for ``timm.data.Mixup`` with ``mode="sage"`` (SAGE.md).

    timm's arguments keep their names, defaults and meaning. In ``"sage"`` mode SAGE takes the place of
    mixup (``mixup_alpha`` is the Beta parameter of the prior); with ``cutmix_alpha > 0`` too,
    ``switch_prob`` picks CutMix or SAGE per batch, as timm picks CutMix or mixup.

    SAGE options:
        model: the live model (or bind later with :meth:`bind`); saliency is recomputed from it at
            every call. DDP, ``torch.compile`` and EMA wrappers are unwrapped.
        upper_lambda: the prior is ``Beta(mixup_alpha, mixup_alpha) * upper_lambda``.
        rand_pos: fraction of all translations evaluated per batch (SAGE.md section 3).
        update_ratio: ``r`` of SAGE.md section 5. With ``r < 1`` the clean loss's parameter gradient
            is kept, with weight ``(1 - r) / r`` (the caller's mixed loss has weight 1), so the update
            direction equals the reference's and its size is ``1 / r`` times larger: use
            ``lr = r * reference_lr`` to match the reference exactly.
        saliency_loss, saliency_reduce, blur_kernel, blur_sigma: see
            :func:`timm_sage.functional.saliency_pass`.
        search_size: pooled search for large images (see :func:`timm_sage.functional.sage_mix`).
        saliency_scale: cheap saliency, the saliency pass on the batch resized by this factor in
            (0, 1] (see :func:`timm_sage.functional.saliency_pass`, ``scale``).
        rearrangement: ``"search"`` (paper), or the ablations ``"none"`` (zero shift only) and
            ``"random"`` (one random shift); see :func:`timm_sage.functional.sample_sage_params`.
        seed / generator: source of every SAGE-mode random draw.
        amp_dtype: run the saliency pass under ``torch.autocast`` with this dtype.
        grad_scaler: a ``GradScaler`` or timm ``NativeScaler``: scales the clean gradient when ``r < 1``.
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
        upper_lambda: float = 0.6,
        rand_pos: float = 0.01,
        update_ratio: float = 1.0,
        saliency_loss: str = "bce_softmax",
        saliency_reduce: str = "mean_abs",
        blur_kernel: int = 5,
        blur_sigma: float = 1.0,
        search_size: int | None = None,
        saliency_scale: float = 1.0,
        rearrangement: str = "search",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        amp_dtype: torch.dtype | None = None,
        grad_scaler: Any = None,
    ) -> None:
        _checks.check_choice("mode", mode, MODES)
        if cutmix_minmax is not None and len(cutmix_minmax) != 2:
            raise ValueError(f"cutmix_minmax must be (min, max), got {cutmix_minmax!r}")
        super().__init__(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            cutmix_minmax=cutmix_minmax,
            prob=prob,
            switch_prob=switch_prob,
            mode=mode,
            correct_lam=correct_lam,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            multi_label=multi_label,
        )
        _checks.check_fraction("mixup_alpha", mixup_alpha, high=math.inf)
        _checks.check_fraction("prob", prob)
        _checks.check_fraction("switch_prob", switch_prob)
        _checks.check_fraction("label_smoothing", label_smoothing)
        _checks.check_positive_int("num_classes", num_classes)
        if mode == "sage" and mixup_alpha <= 0:
            raise ValueError(
                "mixup_alpha must be > 0 with mode='sage': it is the Beta parameter of SAGE's prior"
            )
        self.upper_lambda = _checks.check_fraction("upper_lambda", upper_lambda)
        self.rand_pos = _checks.check_fraction("rand_pos", rand_pos, open_low=True)
        self.update_ratio = _checks.check_fraction("update_ratio", update_ratio, open_low=True)
        self.saliency_loss = _checks.check_choice("saliency_loss", saliency_loss, functional.SALIENCY_LOSSES)
        self.saliency_reduce = _checks.check_choice(
            "saliency_reduce", saliency_reduce, functional.SALIENCY_REDUCTIONS
        )
        self.blur_kernel = _checks.check_positive_int("blur_kernel", blur_kernel)
        self.blur_sigma = _checks.check_fraction("blur_sigma", blur_sigma, high=math.inf, open_low=True)
        self.search_size = (
            None if search_size is None else _checks.check_positive_int("search_size", search_size)
        )
        self.saliency_scale = _checks.check_fraction("saliency_scale", saliency_scale, open_low=True)
        self.rearrangement = _checks.check_choice("rearrangement", rearrangement, functional.REARRANGEMENTS)
        if amp_dtype is not None and not isinstance(amp_dtype, torch.dtype):
            raise TypeError(f"amp_dtype must be a torch.dtype or None, got {type(amp_dtype).__name__}")
        self.amp_dtype = amp_dtype
        _checks.check_generator("generator", generator)
        if generator is None:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(int(seed))
            else:
                generator.seed()
        elif seed is not None:
            raise ValueError("pass either seed or generator, not both")
        self.generator = generator
        self._scale = _scale_function(grad_scaler)
        self.model: nn.Module | None = None
        if model is not None:
            self.bind(model, grad_scaler=grad_scaler)
        self.last: SageMixRecord | None = None
        self.skipped_batches = 0

    # -- binding -------------------------------------------------------------------------------
    def bind(self, model: nn.Module, *, grad_scaler: Any = None) -> SageMixup:
        """Bind the live model whose saliency drives mixing (wrappers are stripped); returns self."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_model(model)
        if grad_scaler is not None:
            self._scale = _scale_function(grad_scaler)
        return self

    @property
    def clean_grad_weight(self) -> float:
        """Weight ``(1 - r) / r`` of the clean loss's parameter gradient (0 with ``r == 1``)."""
        return (1.0 - self.update_ratio) / self.update_ratio

    # -- random draws --------------------------------------------------------------------------
    def _numpy_rng(self) -> np.random.Generator:
        # One 63-bit seed from the torch generator drives the numpy draws (Beta, box) of this call.
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=self.generator))
        return np.random.default_rng(seed)

    def draw_sage_params(
        self, batch: int, height: int, width: int, rng: np.random.Generator | None = None
    ) -> SageParams:
        """Draw ``perm``, ``prior`` and candidate ``translations`` for one batch (CPU tensors)."""
        return functional.sample_sage_params(
            batch,
            height,
            width,
            alpha=self.mixup_alpha,
            upper_lambda=self.upper_lambda,
            rand_pos=self.rand_pos,
            generator=self.generator,
            search_size=self.search_size,
            rng=rng if rng is not None else self._numpy_rng(),
            rearrangement=self.rearrangement,
        )

    # -- the call ------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor | None = None):
        """Mix a batch: ``x`` (B, C, H, W) float, ``target`` (B,) labels -> (x, soft target (B, C)).

        In timm's modes this is timm's ``Mixup.__call__`` (mixing ``x`` in place). In ``"sage"`` mode
        the mixed images are a new tensor; ``saliency`` (B, H, W) may be given instead of a bound model.
        """
        if self.mode != "sage":
            return super().__call__(x, target)
        _checks.check_tensor("x", x)
        _checks.check_floating("x", x)
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        batch = x.shape[0]
        rng = self._numpy_rng()
        use_mixing = self.mixup_enabled and rng.random() < self.mix_prob
        use_cutmix = (
            use_mixing
            and self.cutmix_alpha > 0
            and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        )
        identity = torch.arange(batch)
        if not use_mixing:
            self.last = SageMixRecord("none", torch.ones(batch), identity)
            return x, self._target(target, identity, torch.ones(batch))
        if use_cutmix:
            return self._cutmix(x, target, rng)
        params = self.draw_sage_params(batch, x.shape[-2], x.shape[-1], rng)
        clean_loss = None
        if saliency is None:
            saliency, clean_loss = self._live_saliency(x, target)
            if saliency is None:
                self.skipped_batches += 1
                warnings.warn(
                    "SAGE: the saliency pass gave a non-finite loss or gradient; this batch is not mixed",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.last = SageMixRecord("none", torch.ones(batch), identity, clean_loss=clean_loss)
                return x, self._target(target, identity, torch.ones(batch))
        out = functional.sage_mix(
            x,
            saliency,
            perm=params.perm,
            prior=params.prior,
            translations=params.translations,
            search_size=self.search_size,
        )
        self.last = SageMixRecord("sage", out.lam, params.perm, out.translation, saliency, clean_loss)
        return out.images, self._target(target, params.perm, out.lam)

    def _target(self, target: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.to(target.device)
        if self.multi_label:
            if target.ndim != 2 or target.shape[1] != self.num_classes:
                raise ValueError(f"multi_label targets must have shape (B, {self.num_classes})")
            dense = target.float() * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return functional.sage_target(dense, perm=perm, lam=lam, num_classes=self.num_classes)
        return functional.sage_target(
            target, perm=perm, lam=lam, num_classes=self.num_classes, label_smoothing=self.label_smoothing
        )

    def _cutmix(self, x: torch.Tensor, target: torch.Tensor, rng: np.random.Generator):
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
        perm = torch.arange(batch - 1, -1, -1)
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        lam_t = torch.full((batch,), float(lam))
        self.last = SageMixRecord("cutmix", lam_t, perm)
        return mixed, self._target(target, perm, lam_t)

    # -- model in the loop ---------------------------------------------------------------------
    def _live_saliency(
        self, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor | None, float | None]:
        if self.model is None:
            raise ValueError(
                "SageMixup(mode='sage') needs the live model: pass model=... or call .bind(model), "
                "or pass saliency=... to the call"
            )
        model = self.model
        inputs = x.contiguous(memory_format=torch.channels_last) if _uses_channels_last(model) else x
        autocast = (
            torch.autocast(device_type=x.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        weight = self.clean_grad_weight
        with autocast:
            result = functional.saliency_pass(
                model,
                inputs,
                target,
                loss=self.saliency_loss,
                reduce=self.saliency_reduce,
                blur_kernel=self.blur_kernel,
                blur_sigma=self.blur_sigma,
                param_grad_weight=weight,
                backward_scale=self._scale if weight > 0 else None,
                scale=self.saliency_scale,
            )
        loss = float(result.loss)
        if not math.isfinite(loss) or not bool(torch.isfinite(result.saliency).all()):
            return None, loss
        return result.saliency, loss

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
            f"upper_lambda={self.upper_lambda}, rand_pos={self.rand_pos}, update_ratio={self.update_ratio}, "
            f"search_size={self.search_size}, label_smoothing={self.label_smoothing}, "
            f"num_classes={self.num_classes}, bound={self.model is not None})"
        )
