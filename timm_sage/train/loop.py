"""One training step, and evaluation, of ``timm-sage train``.

The step is the mixer's: in SAGE mode :class:`timm_sage.SageMixup` runs the one SAGE step
(:mod:`timm_sage.core.step`: saliency pass, whose backward also computes ``(1 - r) * d l_clean / d
params``, then the mix), and the mixed loss here takes the mixer's ``loss_weight`` (r, carrying that
clean gradient into this step's own, scaled, backward), so ``.grad`` holds the gradient of
``(1 - r) * l_clean + r * l_mixed``, as in timm's train.py with the plugin and in a user's loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StepResult", "evaluate", "train_step"]


@dataclass
class StepResult:
    """What one step did: ``loss`` (0-dim tensor, the mixed-batch loss before its weight), ``inputs``
    (B, C, H, W) and ``target`` (B,) or (B, num_classes) actually trained on, ``logits``
    (B, num_classes) detached, ``method`` ("sage", "cutmix", "mixup" via timm, or "none")."""

    loss: torch.Tensor
    inputs: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    method: str


def _backward(loss: torch.Tensor, scaler: Any) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    mixer: Any = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: Any = None,
    channels_last: bool = False,
) -> StepResult:
    """Forward and backward of one batch; gradients accumulate in ``.grad``, no optimizer step.

    Args:
        model: in train mode.
        x: (B, C, H, W) float32 normalised images; y: (B,) int64 labels.
        criterion: loss of (logits, target); SoftTargetCrossEntropy when mixing.
        mixer: None, or a :class:`timm_sage.SageMixup` (any mode), bound to ``model`` in SAGE mode.
        autocast: context factory for mixed precision; scaler: a ``torch.amp.GradScaler`` or None.

    Returns:
        :class:`StepResult`. In SAGE mode ``.grad`` holds ``(1 - r) grad(l_clean) + r grad(l_mixed)``.
    """
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0): there is nothing to train on")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    weight: float | torch.Tensor = 1.0
    if mixer is not None:
        inputs, target = mixer(x, y)
        weight = mixer.loss_weight
        if mixer.mode == "sage":
            method = mixer.last.method
        else:
            method = "mixup" if mixer.mixup_enabled else "none"
    else:
        inputs, target, method = x, y, "none"
    with autocast():
        logits = model(inputs.contiguous(memory_format=layout))
        loss = criterion(logits, target)
    _backward(loss * weight, scaler)
    return StepResult(loss.detach(), inputs, target, logits.detach(), method)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """(B,) labels, or the argmax of (B, num_classes) soft targets."""
    return target.argmax(1) if target.ndim == 2 else target


def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 predictions and labels over ``batches`` in eval mode: two (N,) int64 CPU tensors, in order."""
    was_training = model.training
    model.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    predicted, labels = [], []
    try:
        with torch.no_grad():
            for x, y in batches:
                with autocast():
                    predicted.append(model(x.contiguous(memory_format=layout)).argmax(1).cpu())
                labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("predict: the test set is empty")
    return torch.cat(predicted), torch.cat(labels)


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
