"""The one SAGE step: saliency pass of the live model, then plan and apply the mix, on the device.

Every entry point that mixes with a live model (``SageMixup`` in a user's loop, the timm ``train.py``
plugin, ``timm-sage train``) runs this function, so an option means the same thing everywhere.

The loss SAGE trains with is ``(1 - r) * l_clean + r * l_mixed`` (docs/algorithm.md, ``r`` =
``update_ratio``). With ``clean_term="separate_pass"`` (the reference's) the saliency pass's own backward
also computes ``(1 - r) * d l_clean / d params``; the step writes no ``.grad`` but returns
``loss_weight``, a :class:`~timm_sage.core.clean.LossWeight` of value r that carries those gradients: the
caller multiplies its mixed-batch loss by it, and that product's backward adds them, scaled like the
loss, whatever the loop did to ``.grad`` in between (:mod:`timm_sage.core.clean`). With
``clean_term="in_batch"`` the
saliency pass takes input gradients only, the images marked by ``draws.clean`` (``round((1 - r) * B)``
of them) go back unmixed with ``lam`` 1 and their own targets, and ``loss_weight`` is 1: the caller's one
loss holds both terms, in expectation over the batch (docs/algorithm.md).

Non-finite saliency, one rule: when the clean loss or any gradient of the saliency pass is NaN or Inf,
the batch is not mixed (images and targets are the clean batch), the clean gradient carried is zero
and ``loss_weight`` is 1, so the caller's step trains on the plain batch. The decision is taken on the
device (``torch.where``): the step never reads a device value back to the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn

from timm_sage.config import SageConfig
from timm_sage.core import mixing
from timm_sage.core.clean import LossWeight
from timm_sage.core.feature_saliency import FeatureHead, source_saliency
from timm_sage.core.saliency import compute_saliency


class SageDraws(NamedTuple):
    """The random draws of one SAGE batch: ``perm`` (B,) long, ``prior`` float, ``translations``
    (K, 2) long, and ``clean`` (B,) bool, the images left unmixed by ``clean_term="in_batch"`` (None
    when no image stays clean) (CPU tensors; moved to the batch's device by the step)."""

    perm: torch.Tensor
    prior: float
    translations: torch.Tensor
    clean: torch.Tensor | None = None


class SageStepResult(NamedTuple):
    """What one SAGE step produced, every tensor on the batch's device and detached.

    ``images`` (B, C, H, W) in x's dtype; ``target`` (B, num_classes) float32; ``lam`` (B,) float32
    (1 where the batch fell back); ``perm`` (B,) long; ``translation`` (B, 2) long; ``saliency``
    (B, H, W) float32; ``clean_loss`` 0-dim float32; ``mixed`` 0-dim bool (False: non-finite saliency,
    clean batch returned); ``loss_weight`` 0-dim float32, the weight of the caller's mixed loss: a
    :class:`~timm_sage.core.clean.LossWeight` carrying the clean gradient when the pass computed one.
    """

    images: torch.Tensor
    target: torch.Tensor
    lam: torch.Tensor
    perm: torch.Tensor
    translation: torch.Tensor
    saliency: torch.Tensor
    clean_loss: torch.Tensor
    mixed: torch.Tensor
    loss_weight: torch.Tensor


def uses_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-D weights are channels_last (the saliency pass then follows; metadata only)."""
    for param in model.parameters():
        if param.ndim == 4:
            return param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
    return False


@contextlib.contextmanager
def saliency_mode(model: nn.Module | Callable, config: SageConfig) -> Iterator[None]:
    """The model's mode for the saliency pass: ``saliency_mode="eval"`` switches a training model to eval
    mode (BatchNorm's running statistics, the reference's ``--eval_mode``) and back afterwards; "train"
    leaves it as the caller has it. Metadata only: no host read."""
    switch = isinstance(model, nn.Module) and config.saliency_mode == "eval" and model.training
    if switch:
        model.eval()
    try:
        yield
    finally:
        if switch:
            model.train()


def draws_to_device(draws: SageDraws, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm (B,), translations (K, 2))`` of ``draws`` on ``device``, both long.

    Host draws bound for a CUDA device travel in one copy from pinned memory, queued asynchronously
    behind the saliency pass (a pageable copy would block the host until the queue drains). Metadata
    only: on the CPU, or for tensors already on the device, nothing is pinned or packed.
    """
    perm, translations = draws.perm, draws.translations
    if device.type == "cuda" and perm.device.type == "cpu" and translations.device.type == "cpu":
        packed = torch.cat((perm.long(), translations.long().reshape(-1))).pin_memory()
        moved = packed.to(device, non_blocking=True)
        return moved[: perm.shape[0]], moved[perm.shape[0] :].view(-1, 2)
    return perm.to(device, non_blocking=True).long(), translations.to(device, non_blocking=True).long()


def _pass_inputs(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, amp_dtype: torch.dtype | None
) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
    """The clean pass's input in the model's memory format, and the autocast it runs under (``amp_dtype``;
    none: as called)."""
    inputs = x
    if isinstance(model, nn.Module) and uses_channels_last(model):
        inputs = x.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    return inputs, autocast


def sage_step(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    draws: SageDraws,
    config: SageConfig,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    clean_buffer: torch.Tensor | None = None,
    head: FeatureHead | None = None,
) -> SageStepResult:
    """Saliency pass, then SAGE mix of the batch, with no host read of a device value.

    Args:
        model: the live model (unwrapped), in the mode the caller trains it in (SAGE: train mode).
        x: (B, C, H, W) floating, normalised images. target: (B,) labels or (B, num_classes) soft ones.
        draws: this batch's :class:`SageDraws`. config: the options.
        num_classes, label_smoothing: of the soft targets (timm's smoothing).
        amp_dtype: run the saliency pass under ``torch.autocast`` with this dtype (None: as called).
        clean_buffer: a released clean-gradient buffer the step may overwrite (see
            :func:`~timm_sage.core.saliency.compute_saliency`).
        head: the feature head (:func:`~timm_sage.core.feature_saliency.read_head`) of the model that
            gives forward-only saliency (``config.saliency_source`` "cam" or "features"; the live model's
            or an EMA copy's); unused by the gradient source, which runs ``model``.
    """
    device = x.device
    in_batch = config.clean_term == "in_batch" and config.update_ratio < 1
    if in_batch and (draws.clean is None or draws.clean.shape != (x.shape[0],)):
        raise ValueError(
            f"clean_term='in_batch' with update_ratio={config.update_ratio} needs draws.clean, a "
            f"({x.shape[0]},) bool mask of the images left unmixed (sample_sage_params(clean_share=1 - r))"
        )
    # in_batch: the clean term comes from the unmixed images of the batch, not from this pass's backward.
    clean_weight = 0.0 if in_batch else 1.0 - config.update_ratio
    inputs, autocast = _pass_inputs(model, x, amp_dtype)
    if config.saliency_source == "gradient":
        with saliency_mode(model, config), autocast:
            clean, clean_grads = compute_saliency(
                model, inputs, target, loss=config.saliency_loss, reduce=config.saliency_reduce,
                blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma, param_grad_weight=clean_weight,
                scale=config.saliency_scale, size=config.saliency_size, clean_buffer=clean_buffer,
                num_classes=num_classes,
            )  # fmt: skip
    else:  # forward-only: one no-grad forward of the head's model (live or EMA), no clean gradient
        if head is None:
            raise ValueError(f"saliency_source={config.saliency_source!r} needs head= (read_head(model))")
        with saliency_mode(head.module, config), autocast:
            clean, clean_grads = source_saliency(model, head, inputs, target, config, num_classes=num_classes)
    perm, translations = draws_to_device(draws, device)
    prior = torch.full((x.shape[0],), draws.prior, device=device)
    with torch.no_grad():
        # A non-finite map would only poison the search; search on uniform maps and discard the result.
        saliency = torch.where(clean.finite, clean.saliency, 1.0)
        plan = mixing.plan(saliency, perm, prior, translations, search_size=config.search_size)
        mixed_images = mixing.apply(x.detach(), perm, plan)
        # (B,) bool: the images that go back mixed (all of them, or none on a non-finite pass; in_batch
        # leaves draws.clean unmixed besides).
        use_mixed = clean.finite.expand(x.shape[0])
        if in_batch:
            use_mixed = use_mixed & ~draws.clean.to(device, non_blocking=True)
        images = torch.where(use_mixed.view(-1, 1, 1, 1), mixed_images, x.detach())
        lam = torch.where(use_mixed, plan.lam, 1.0)
        soft = mixing.mix_targets(target, perm, lam, num_classes, label_smoothing)
    mixed_weight = 1.0 if in_batch else config.update_ratio
    loss_weight = torch.where(clean.finite, mixed_weight, 1.0).float()
    if clean_grads is not None:
        loss_weight = LossWeight(loss_weight, clean_grads)
    return SageStepResult(
        images, soft, lam, perm, plan.translation, clean.saliency, clean.loss, clean.finite, loss_weight
    )


def clean_term_step(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    config: SageConfig,
    *,
    amp_dtype: torch.dtype | None = None,
    clean_buffer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean term of ``(1 - r) * l_clean + r * l_mixed`` for a mix that is not SAGE's (Mixup, CutMix,
    timm's switch), by the pass SAGE's step runs: the same forward and backward on the clean batch (the
    same loss, ``config.saliency_loss``, in the same mode), at the same cost, its parameter gradients
    weighted by ``1 - r``; the saliency it also yields is not used. No host read of a device value.

    Args:
        model: the live model (unwrapped). x: (B, C, H, W) floating, normalised, unmixed images.
        target: (B,) labels or (B, num_classes) soft ones. config: the options (``update_ratio < 1``).
        amp_dtype, clean_buffer: as for :func:`sage_step`.
    Returns:
        ``loss_weight``: 0-dim float32, r (1 when the pass was not finite, its gradients then zero), a
        :class:`~timm_sage.core.clean.LossWeight` carrying the clean gradients when there are any; and
        ``clean_loss``: 0-dim float32.
    """
    inputs, autocast = _pass_inputs(model, x, amp_dtype)
    with saliency_mode(model, config), autocast:
        clean, clean_grads = compute_saliency(
            model, inputs, target, loss=config.saliency_loss, reduce=config.saliency_reduce,
            blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma,
            param_grad_weight=1.0 - config.update_ratio, scale=1.0, size=None, clean_buffer=clean_buffer,
        )  # fmt: skip
    loss_weight = torch.where(clean.finite, config.update_ratio, 1.0).float()
    if clean_grads is not None:
        loss_weight = LossWeight(loss_weight, clean_grads)
    return loss_weight, clean.loss

