"""One training step (SAGE.md section 5 for SAGE), one epoch, and evaluation.

The SAGE step: ONE clean forward/backward (:func:`timm_sage.functional.saliency_pass`) gives the
saliency and, in the same backward, ``(1 - r) * d l_clean / d params`` into ``.grad``; the mixer builds
the mixed batch from that saliency; the mixed pass adds ``r * d l_mixed / d params``; the caller then
takes one optimizer step. With ``r = 1`` the clean pass computes input gradients only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from timm_sage import functional

__all__ = ["SageOptions", "StepResult", "evaluate", "train_step"]


@dataclass(frozen=True)
class SageOptions:
    """The SAGE options the step itself needs (the mixer holds the rest): ``r`` and the saliency pass."""

    update_ratio: float = 1.0
    saliency_loss: str = "bce_softmax"
    saliency_reduce: str = "mean_abs"
    blur_kernel: int = 5
    blur_sigma: float = 1.0
    saliency_scale: float = 1.0


@dataclass
class StepResult:
    """What one step did: ``loss`` (mixed-batch loss, float), ``inputs`` (B, C, H, W) and ``target``
    (B,) or (B, num_classes) actually trained on, ``logits`` (B, num_classes) detached, ``method``
    ("sage", "mixup"/"cutmix" via timm, "none") and ``skipped`` (a non-finite saliency pass)."""

    loss: float
    inputs: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor | None
    method: str
    skipped: bool = False
    clean_loss: float | None = None


def _backward(loss: torch.Tensor, scaler: Any) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    mixer: Any = None,
    sage: SageOptions | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: Any = None,
    channels_last: bool = False,
) -> StepResult:
    """Forward and backward of one batch; gradients accumulate in ``.grad``, no optimizer step.

    Args:
        model: in train mode.
        x: (B, C, H, W) float32 normalised images; y: (B,) int64 labels.
        criterion: loss of (logits, target); SoftTargetCrossEntropy when mixing.
        mixer: None, or a :class:`timm_sage.SageMixup` (any mode).
        sage: with ``mixer.mode == "sage"``, the SAGE options of the step (``update_ratio`` = r).
        autocast: context factory for mixed precision; scaler: a ``torch.amp.GradScaler`` or None.

    Returns:
        :class:`StepResult`. In SAGE mode ``.grad`` holds ``(1 - r) grad(l_clean) + r grad(l_mixed)``.
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    weight = 1.0
    clean_loss = None
    method = "none"
    sage_active = mixer is not None and mixer.mode == "sage" and mixer.mixup_enabled
    if sage_active:
        options = sage or SageOptions(update_ratio=mixer.update_ratio)
        ratio = options.update_ratio
        clean_weight = 1.0 - ratio
        with autocast():
            clean = functional.saliency_pass(
                model,
                x.contiguous(memory_format=layout),
                y,
                loss=options.saliency_loss,
                reduce=options.saliency_reduce,
                blur_kernel=options.blur_kernel,
                blur_sigma=options.blur_sigma,
                param_grad_weight=clean_weight,
                backward_scale=scaler.scale if (scaler is not None and clean_weight > 0) else None,
                scale=options.saliency_scale,
            )
        clean_loss = float(clean.loss)
        if not math.isfinite(clean_loss) or not bool(torch.isfinite(clean.saliency).all()):
            model.zero_grad(set_to_none=True)
            return StepResult(math.nan, x, y, None, "none", skipped=True, clean_loss=clean_loss)
        inputs, target = mixer(x, y, saliency=clean.saliency)
        method = mixer.last.method if mixer.last is not None else "sage"
        weight = ratio
    elif mixer is not None:
        inputs, target = mixer(x, y)
        method = "mixup" if mixer.mixup_enabled else "none"
    else:
        inputs, target = x, y
    with autocast():
        logits = model(inputs.contiguous(memory_format=layout))
        loss = criterion(logits, target)
    _backward(loss * weight, scaler)
    return StepResult(float(loss.detach()), inputs, target, logits.detach(), method, clean_loss=clean_loss)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """(B,) labels, or the argmax of (B, num_classes) soft targets."""
    return target.argmax(1) if target.ndim == 2 else target


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
) -> dict[str, float]:
    """Test loss (cross-entropy), top-1 and top-5 accuracy (%) in eval mode; restores the mode after."""
    was_training = model.training
    model.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    total, loss_sum, top1, top5 = 0, 0.0, 0, 0
    start = time.perf_counter()
    try:
        for x, y in batches:
            with autocast():
                logits = model(x.contiguous(memory_format=layout)).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = ranked == y[:, None]
            top1 += int(hits[:, 0].sum())
            top5 += int(hits.any(1).sum())
            total += y.shape[0]
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the test set is empty")
    return {
        "test_loss": loss_sum / total,
        "test_top1": 100.0 * top1 / total,
        "test_top5": 100.0 * top5 / total,
        "eval_time": time.perf_counter() - start,
    }
