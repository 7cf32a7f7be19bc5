"""SAGE as a torchvision ``transforms.v2`` batch transform, in the idiom of ``v2.MixUp`` / ``v2.CutMix``.

``SAGE(num_classes=10, model=model)(images, labels)`` mixes a batch with saliency from the live model;
``SAGE(num_classes=10)(images, labels, saliency)`` (or a dict sample with a ``"saliency"`` entry) uses
precomputed maps, e.g. from :class:`timm_sage.data.cache.SaliencyCache`, and then works in a ``collate_fn``.
The checks and error messages on the inputs are those of ``v2.MixUp``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import PIL.Image
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2._utils import _parse_labels_getter, has_any, is_pure_tensor, query_size

from timm_sage import functional
from timm_sage.config import SageConfig
from timm_sage.core import checks as _checks
from timm_sage.core import mixing
from timm_sage.core.feature_saliency import read_head, source_saliency
from timm_sage.core.mixing import SagePlan
from timm_sage.core.step import saliency_mode
from timm_sage.mixup import feature_model, saliency_model, unwrap_model

__all__ = ["SAGE"]

_UNSUPPORTED = tuple(
    t
    for t in (
        PIL.Image.Image,
        tv_tensors.BoundingBoxes,
        tv_tensors.Mask,
        getattr(tv_tensors, "KeyPoints", None),
    )
    if t is not None
)


def _default_saliency_getter(inputs: Any) -> torch.Tensor | None:
    """A third tensor of a tuple/list, or the ``"saliency"`` entry (any case) of a dict sample."""
    if isinstance(inputs, (tuple, list)):
        if len(inputs) >= 3 and isinstance(inputs[2], torch.Tensor):
            return inputs[2]
        inputs = inputs[1] if len(inputs) == 2 else None
    if isinstance(inputs, Mapping):
        for key, value in inputs.items():
            if isinstance(key, str) and key.lower() == "saliency":
                return value
    return None


def _transform_config(config: SageConfig | None, options: dict[str, Any]) -> SageConfig:
    """The transforms' SageConfig: a given one, or built from keywords; ``update_ratio`` stays 1 (no loss)."""
    if config is None:
        config = SageConfig(**options)
    elif not isinstance(config, SageConfig):
        raise TypeError(f"config must be a SageConfig, got {type(config).__name__}")
    elif options:
        raise ValueError(
            f"pass the SAGE options either as config or as keywords, not both: {sorted(options)}"
        )
    if config.update_ratio != 1.0:
        raise ValueError("update_ratio weights a training loss; a transform has none: leave it at 1")
    if config.saliency_model != "live":
        raise ValueError(
            "saliency_model='ema' is an option of the training mixers (SageMixup, the plugin, timm-sage "
            "train); a transform takes the saliency of the model it is bound to: bind the EMA copy itself"
        )
    return config


class SAGE(Transform):
    """Saliency-guided mixup with optimal rearrangements (Ma et al., BMVC 2022) on a batch, like ``v2.MixUp``.

    Call it on a batch: ``images`` (B, C, H, W) ``tv_tensors.Image`` or plain tensor (float, or integer
    with precomputed saliency), ``labels`` (B,) integer or (B, num_classes) probabilities. It returns the
    same structure with mixed images (same type, dtype and device; the inputs are not modified) and soft
    labels (B, num_classes) float. Each image ``b`` is mixed with its partner ``perm[b]`` slid to the
    best of the batch's candidate translations; its label share is the mean of its mask.

    Saliency, (B, H, W) or (B, 1, H, W) non-negative floats, comes from:
        * the batch: a third element ``(images, labels, saliency)`` or a ``"saliency"`` key of a dict
          sample (``saliency_getter`` overrides the lookup). It is passed through unchanged; or
        * the bound model (``model=...`` or :meth:`bind`): one forward/backward of the clean batch
          per call (:func:`timm_sage.functional.saliency_pass`), in whatever mode the model is in.

    The plan (translation, mask and label share per image) is computed once per call, by
    :meth:`plan`, and applied once to each input by :meth:`transform`.

    Args:
        alpha: Beta parameter of the prior; ``prior = Beta(alpha, alpha) * upper_lambda``.
        num_classes: required for integer labels, as in ``v2.MixUp``.
        labels_getter: ``"default"`` or a callable, as in ``v2.MixUp``.
        saliency_getter: ``"default"`` or a callable returning the (B, H, W) maps or None.
        model: live model for saliency; DDP / compile / EMA wrappers are unwrapped. Not a submodule.
        seed / generator: source of every random draw (a fresh seed when neither is given). In
            DataLoader workers the generator is reseeded from the worker's seed so workers differ.
        config / **sage_options: the SAGE options, a :class:`timm_sage.SageConfig` or its fields as
            keywords (``upper_lambda``, ``rand_pos``, ``search_size``, ``saliency_loss``,
            ``saliency_reduce``, ``blur_kernel``, ``blur_sigma``, ``saliency_scale``,
            ``saliency_size``, ``rearrangement``, ``saliency_source``). ``update_ratio`` belongs to
            training and must stay 1 here; ``saliency_model`` stays "live" (bind an EMA copy itself).

    A non-finite saliency pass of the bound model leaves the batch unmixed (mask 1, lam 1), decided on
    the device; :attr:`skipped_batches` counts such batches.
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        num_classes: int | None = None,
        labels_getter: Any = "default",
        saliency_getter: Callable[[Any], torch.Tensor | None] | str = "default",
        model: nn.Module | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        config: SageConfig | None = None,
        **sage_options: Any,
    ) -> None:
        super().__init__()
        self.alpha = _checks.check_fraction("alpha", alpha, high=math.inf, open_low=True)
        self.config = _transform_config(config, sage_options)
        self.num_classes = (
            None if num_classes is None else _checks.check_positive_int("num_classes", num_classes)
        )
        self._labels_getter = _parse_labels_getter(labels_getter)
        if saliency_getter == "default":
            saliency_getter = _default_saliency_getter
        elif not callable(saliency_getter):
            raise TypeError(
                f"saliency_getter must be 'default' or a callable, got {type(saliency_getter).__name__}"
            )
        self._saliency_getter = saliency_getter
        self.skipped_batches: int | torch.Tensor = 0
        _checks.check_generator("generator", generator)
        if generator is not None and seed is not None:
            raise ValueError("pass either seed or generator, not both")
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        self.generator = generator
        self._base_seed = generator.initial_seed()
        self._worker_key: tuple[int, int] | None = None
        object.__setattr__(self, "_model", None)  # kept out of nn.Module's registry: not a submodule
        object.__setattr__(self, "_saliency_model", None)  # what the saliency pass calls (compiled or not)
        object.__setattr__(self, "_feature_head", None)  # forward-only saliency_source: the model's head
        if model is not None:
            self.bind(model)

    # -- model ---------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module | None:
        """The bound model (unwrapped), or None when saliency comes with the batch."""
        return self._model

    def bind(self, model: nn.Module) -> SAGE:
        """Bind the live model whose saliency drives mixing; returns self."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        object.__setattr__(self, "_model", unwrap_model(model))
        # A compiled model: the saliency pass runs compiled too (saliency_compile "follow").
        object.__setattr__(self, "_saliency_model", saliency_model(model, self.config))
        head = None
        if self.config.saliency_source != "gradient":  # a model whose head cannot be read: ValueError here
            head = read_head(
                unwrap_model(model), self.config.saliency_source, feature_model(model, self.config)
            )
        object.__setattr__(self, "_feature_head", head)
        return self

    # -- random draws --------------------------------------------------------------------------
    def _reseed_in_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return
        key = (os.getpid(), int(info.seed))
        if key != self._worker_key:
            self._worker_key = key
            self.generator.manual_seed((self._base_seed * 1_000_003 + int(info.seed)) % (2**63))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw ``perm`` (B,) long, ``prior`` float and candidate ``translations`` (K, 2) long (CPU).

        Args:
            flat_inputs: the inputs to transform; the first image-like tensor gives B, H and W.
        """
        images = [
            i for i in flat_inputs if isinstance(i, (tv_tensors.Image, tv_tensors.Video)) or is_pure_tensor(i)
        ]
        if not images:
            raise ValueError(f"{type(self).__name__}() needs a batch of images (B, C, H, W)")
        height, width = query_size(images)
        self._reseed_in_worker()
        params = functional.sample_sage_params(
            images[0].shape[0],
            height,
            width,
            alpha=self.alpha,
            upper_lambda=self.config.upper_lambda,
            rand_pos=self.config.rand_pos,
            generator=self.generator,
            search_size=self.config.search_size,
            rearrangement=self.config.rearrangement,
        )
        return params._asdict()

    # -- the call ------------------------------------------------------------------------------
    def forward(self, *inputs: Any) -> Any:
        inputs = inputs if len(inputs) > 1 else inputs[0]
        flat_inputs, spec = tree_flatten(inputs)
        if has_any(flat_inputs, *_UNSUPPORTED):
            raise ValueError(
                f"{type(self).__name__}() does not support PIL images, bounding boxes, keypoints and masks."
            )
        labels = self._labels_getter(inputs)
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"The labels must be a tensor, but got {type(labels)} instead.")
        if labels.ndim not in (1, 2):
            raise ValueError(
                f"labels should be index based with shape (batch_size,) "
                f"or probability based with shape (batch_size, num_classes), "
                f"but got a tensor of shape {labels.shape} instead."
            )
        if labels.ndim == 2 and self.num_classes is not None and labels.shape[-1] != self.num_classes:
            raise ValueError(
                f"When passing 2D labels, "
                f"the number of elements in last dimension must match num_classes: "
                f"{labels.shape[-1]} != {self.num_classes}. "
                f"You can Leave num_classes to None."
            )
        if labels.ndim == 1 and self.num_classes is None:
            raise ValueError("num_classes must be passed if the labels are index-based (1D)")
        saliency = self._saliency_getter(inputs)
        # The saliency entry is never transformed, nor mistaken for the images by v2's pure-tensor rule.
        needs_transform = self._needs_transform_list([None if i is saliency else i for i in flat_inputs])
        to_transform = [i for i, needed in zip(flat_inputs, needs_transform, strict=True) if needed]
        params = {"labels": labels, "batch_size": labels.shape[0], **self.make_params(to_transform)}
        anchor = to_transform[0]
        self._check_image(anchor, batch_size=params["batch_size"])
        params.update(self.plan(anchor, labels, saliency, params))
        needs_transform[next(idx for idx, i in enumerate(flat_inputs) if i is labels)] = True
        flat_outputs = [
            self.transform(i, params) if needed else i
            for i, needed in zip(flat_inputs, needs_transform, strict=True)
        ]
        return tree_unflatten(flat_outputs, spec)

    def _check_image(self, inpt: Any, *, batch_size: int) -> None:
        if isinstance(inpt, tv_tensors.Video):
            raise ValueError(f"{type(self).__name__}() does not support videos: pass (B, C, H, W) images")
        if inpt.ndim != 4:
            raise ValueError(f"Expected a batched input with 4 dims, but got {inpt.ndim} dimensions instead.")
        if inpt.shape[0] != batch_size:
            raise ValueError(
                f"The batch size of the image or video does not match the batch size of the labels: "
                f"{inpt.shape[0]} != {batch_size}."
            )

    def plan(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        saliency: torch.Tensor | None,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        """Search the translations and build masks and label shares for drawn ``params``, once.

        Args:
            images: (B, C, H, W) anchor batch (used for the model's saliency pass and the device).
            labels: (B,) or (B, num_classes) labels, the saliency pass's target.
            saliency: (B, H, W) / (B, 1, H, W) maps (checked), or None to use the bound model.
            params: from :meth:`make_params`.

        Returns:
            ``{"perm" (B,) long, "saliency" (B, H, W) float32, "plan": SagePlan}`` with the plan's
            ``translation`` (B, 2) long, ``mask`` (B, H, W) float32 and ``lam`` (B,) float32 also under
            their own keys; all on the images' device.
        """
        plain = images.as_subclass(torch.Tensor)
        device = plain.device
        perm = params["perm"].to(device)
        if saliency is None:
            maps, finite = self._model_saliency(plain, labels)
            prior = torch.full((plain.shape[0],), float(params["prior"]), device=device)
            found = mixing.plan(
                torch.where(finite, maps, 1.0), perm, prior, params["translations"].to(device),
                search_size=self.config.search_size,
            )  # fmt: skip
            # A non-finite pass leaves the batch unmixed: mask and lam 1, decided on the device.
            sage_plan = SagePlan(
                found.translation, torch.where(finite, found.mask, 1.0), torch.where(finite, found.lam, 1.0)
            )
            self.skipped_batches = self.skipped_batches + (~finite).long()
        else:
            _checks.check_tensor("saliency", saliency)
            # The public boundary, once, against the images' shape; then the kernel's plan.
            maps, perm, prior, translations = functional._check_mix_inputs(
                plain.shape, saliency.as_subclass(torch.Tensor), perm, params["prior"],
                params["translations"], self.config.search_size, None, device,
            )  # fmt: skip
            sage_plan = mixing.plan(maps, perm, prior, translations, search_size=self.config.search_size)
            maps = maps.float()
        return {"perm": perm, "saliency": maps, "plan": sage_plan, **sage_plan._asdict()}

    def _model_saliency(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._model is None:
            raise ValueError(
                f"{type(self).__name__}() needs saliency: bind the live model (model=... or .bind(model)) "
                "or pass it with the batch ((images, labels, saliency) or a dict with a 'saliency' key)"
            )
        self.config.check_image_size(*images.shape[-2:])
        floating = images if images.is_floating_point() else images.float()
        with saliency_mode(self._model, self.config):
            result, _ = source_saliency(
                self._saliency_model, self._feature_head, floating, labels.to(images.device), self.config
            )
        return result.saliency, result.finite

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Apply the plan of :meth:`plan` to one input: images (mixed once) or labels (soft targets)."""
        if inpt is params["labels"]:
            num_classes = self.num_classes if inpt.ndim == 1 else inpt.shape[-1]
            mixed = functional.sage_target(
                inpt,
                perm=params["perm"].to(inpt.device),
                lam=params["lam"].to(inpt.device),
                num_classes=num_classes,
            )
            return mixed.to(inpt.dtype) if inpt.is_floating_point() else mixed
        if isinstance(inpt, tv_tensors.Image) or is_pure_tensor(inpt):
            self._check_image(inpt, batch_size=params["batch_size"])
            plain = inpt.as_subclass(torch.Tensor).detach()
            sage_plan = SagePlan(*(t.to(plain.device) for t in params["plan"]))
            if plain.is_floating_point():
                mixed = mixing.apply(plain, params["perm"].to(plain.device), sage_plan)
            else:
                info = torch.iinfo(plain.dtype)
                mixed = mixing.apply(plain.float(), params["perm"].to(plain.device), sage_plan)
                mixed = mixed.round_().clamp_(info.min, info.max).to(plain.dtype)
            return tv_tensors.wrap(mixed, like=inpt) if isinstance(inpt, tv_tensors.Image) else mixed
        return inpt

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, num_classes={self.num_classes}, config={self.config!r}, "
            f"bound={self._model is not None}"
        )
