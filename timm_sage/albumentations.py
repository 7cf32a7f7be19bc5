"""SAGE for albumentations 2.x pipelines: :class:`SageMix`, a mixing transform in the style of ``Mosaic``.

The partner sample travels through a metadata key, as ``Mosaic``'s partners do::

    out = A.Compose([SageMix(num_classes=10)], seed=0)(
        image=image, label=3,
        sage_metadata={"image": partner, "label": 7, "saliency": partner_map, "anchor_saliency": image_map},
    )
    out["image"]  # mixed image, same shape and dtype
    out["label"]  # (num_classes,) float32 soft label

The translation search and the mask are :func:`timm_sage.functional.sage_mix` on the pair, so the result
equals what :class:`timm_sage.transforms.SAGE` and :class:`timm_sage.mixup.SageMixup` produce for the same
images, maps, prior and candidate translations. :class:`SageMixDataset` pairs samples with random
partners and their cached saliency (:class:`timm_sage.data.cache.SaliencyCache`) for a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from albumentations.core.transforms_interface import BaseTransformInitSchema, ImageOnlyTransform
from pydantic import Field

from timm_sage import functional
from timm_sage.config import SAGE_DEFAULTS as _D
from timm_sage.config import SageConfig

__all__ = ["SageMix", "SageMixDataset"]

_METADATA_FIELDS = ("image", "label", "saliency", "anchor_saliency")


class SageMix(ImageOnlyTransform):
    """Mix an image with a partner by SAGE (docs/algorithm.md): a saliency-guided mask after the best
    translation.

    Args:
        num_classes: number of classes of the soft label.
        alpha: Beta parameter of the prior; ``prior = Beta(alpha, alpha) * upper_lambda``.
        upper_lambda, rand_pos, search_size, rearrangement: the SAGE options of the search, as in
            :class:`timm_sage.SageConfig` (defaults and rules from there, checked at construction).
        metadata_key: data key of the partner dict ``{"image", "label", "saliency", "anchor_saliency"}``:
            partner image (same shape and dtype as ``image``), partner label (int or (num_classes,)
            probabilities), partner and anchor saliency maps (H, W) (or (H, W, 1)), non-negative.
        label_key: data key of the anchor's label; the output holds the (num_classes,) float32 soft label
            there, also when the transform is skipped (``p < 1``), so samples collate alike.
        p: probability of mixing.

    Targets: image (uint8 or float32, (H, W) or (H, W, C)). Random draws come from ``self.random_generator``
    (seeded by ``A.Compose(seed=...)``).
    """

    class InitSchema(BaseTransformInitSchema):
        num_classes: int = Field(ge=1)
        alpha: float = Field(gt=0)
        upper_lambda: float
        rand_pos: float
        search_size: int | Literal["auto"] | None = None
        rearrangement: str
        metadata_key: str
        label_key: str

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        upper_lambda: float = _D.upper_lambda,
        rand_pos: float = _D.rand_pos,
        search_size: int | str | None = _D.search_size,
        rearrangement: str = _D.rearrangement,
        metadata_key: str = "sage_metadata",
        label_key: str = "label",
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.config = SageConfig(
            upper_lambda=upper_lambda, rand_pos=rand_pos, search_size=search_size, rearrangement=rearrangement
        )
        self.num_classes = num_classes
        self.alpha = alpha
        self.upper_lambda = self.config.upper_lambda
        self.rand_pos = self.config.rand_pos
        self.search_size = self.config.search_size
        self.rearrangement = self.config.rearrangement
        self.metadata_key = metadata_key
        self.label_key = label_key

    @property
    def targets_as_params(self) -> list[str]:
        """The metadata and label keys (required in every call)."""
        return [self.metadata_key, self.label_key]

    def draw_sage_params(self, height: int, width: int) -> dict[str, Any]:
        """Draw ``prior`` (float) and ``translations`` (K, 2) long from ``self.random_generator``."""
        generator = torch.Generator().manual_seed(int(self.random_generator.integers(0, 2**63 - 1)))
        draws = functional.sample_sage_params(
            2, height, width, alpha=self.alpha, upper_lambda=self.config.upper_lambda,
            rand_pos=self.config.rand_pos, generator=generator, search_size=self.config.search_size,
            rng=self.random_generator, rearrangement=self.config.rearrangement,
        )  # fmt: skip
        return {"prior": draws.prior, "translations": draws.translations}

    def _one_hot(self, label: Any, name: str) -> torch.Tensor:
        array = np.asarray(label)
        if array.ndim == 0 and np.issubdtype(array.dtype, np.integer):
            if not 0 <= int(array) < self.num_classes:
                raise ValueError(f"{name} must lie in [0, {self.num_classes - 1}], got {int(array)}")
            return torch.nn.functional.one_hot(torch.tensor(int(array)), self.num_classes).float()
        if array.shape == (self.num_classes,) and np.issubdtype(array.dtype, np.floating):
            return torch.from_numpy(array.astype(np.float32))
        raise ValueError(
            f"{name} must be an int class index or ({self.num_classes},) float probabilities, "
            f"got {array.dtype} of shape {array.shape}"
        )

    def _saliency(self, value: Any, name: str, shape: tuple[int, int]) -> torch.Tensor:
        array = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (the image's H, W), got {array.shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"{name} must be a float array, got {array.dtype}")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Check the pair, draw the prior and candidates, search and mix: the mixed image and soft label."""
        if "image" not in data:
            raise ValueError("SageMix mixes one image per call: pass image=...")
        image = data["image"]
        metadata = data[self.metadata_key]
        if not isinstance(metadata, Mapping) or any(key not in metadata for key in _METADATA_FIELDS):
            raise ValueError(f"{self.metadata_key} must be a dict with keys {', '.join(_METADATA_FIELDS)}")
        partner = np.asarray(metadata["image"])
        if image.dtype not in (np.uint8, np.float32):
            raise TypeError(f"image must be uint8 or float32, got {image.dtype}")
        if partner.shape != image.shape or partner.dtype != image.dtype:
            raise ValueError(
                f"{self.metadata_key}['image'] must match image: got {partner.shape} {partner.dtype}, "
                f"expected {image.shape} {image.dtype}"
            )
        height, width = image.shape[:2]
        maps = torch.stack(
            [
                self._saliency(
                    metadata["anchor_saliency"], f"{self.metadata_key}['anchor_saliency']", (height, width)
                ),
                self._saliency(metadata["saliency"], f"{self.metadata_key}['saliency']", (height, width)),
            ]
        )
        labels = torch.stack(
            [
                self._one_hot(data[self.label_key], self.label_key),
                self._one_hot(metadata["label"], f"{self.metadata_key}['label']"),
            ]
        )
        draw = self.draw_sage_params(height, width)
        pair = np.stack([image, partner]).astype(np.float32)
        x = torch.from_numpy(pair.reshape(2, height, width, -1)).permute(0, 3, 1, 2)
        perm = torch.tensor([1, 0])
        out = functional.sage_mix(
            x,
            maps,
            perm=perm,
            prior=draw["prior"],
            translations=draw["translations"],
            search_size=self.search_size,
        )
        mixed = out.images[0].permute(1, 2, 0).numpy().reshape(image.shape)
        if image.dtype == np.uint8:
            mixed = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        soft = functional.sage_target(labels, perm=perm, lam=out.lam, num_classes=self.num_classes)[0]
        return {
            "mixed": np.ascontiguousarray(mixed),
            "soft_label": soft.numpy(),
            "lam": float(out.lam[0]),
            "translation": tuple(int(v) for v in out.translation[0]),
            "prior": draw["prior"],
        }

    def apply(self, img: np.ndarray, mixed: np.ndarray, **params: Any) -> np.ndarray:
        """The mixed image (H, W[, C]), ``img``'s dtype."""
        return mixed

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        result = super().apply_with_params(params, *args, **kwargs)
        result[self.label_key] = params["soft_label"]
        return result

    def __call__(self, *args: Any, force_apply: bool = False, **kwargs: Any) -> Any:
        result = super().__call__(*args, force_apply=force_apply, **kwargs)
        if not self.params and self.label_key in result:  # skipped: a one-hot label, as a mixed one would be
            result = dict(result)
            result[self.label_key] = self._one_hot(result[self.label_key], self.label_key).numpy()
        return result

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (
            "num_classes",
            "alpha",
            "upper_lambda",
            "rand_pos",
            "search_size",
            "rearrangement",
            "metadata_key",
            "label_key",
        )


class SageMixDataset(torch.utils.data.Dataset):
    """Pairs each sample with a random partner and both cached saliency maps, then runs ``transform``.

    Args:
        images: indexable of (H, W[, C]) uint8/float32 arrays (e.g. an (N, H, W) array).
        labels: indexable of int labels.
        saliency: ``saliency[i] -> (H, W)`` map of sample i (a :class:`timm_sage.data.cache.SaliencyCache`).
        transform: an ``A.Compose`` holding a :class:`SageMix` (with its default keys).
        to_tensor: optional ``image -> tensor`` applied after ``transform``.
        seed: partners are drawn from a generator seeded by ``seed`` (and by the worker's seed in
            DataLoader workers, which changes with every epoch).

    ``ds[i] -> (image, soft label (num_classes,) float32)``.
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        saliency: Any,
        transform: Callable[..., dict[str, Any]],
        *,
        to_tensor: Callable[[np.ndarray], Any] | None = None,
        seed: int = 0,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} != {len(labels)}")
        self.images, self.labels, self.saliency = images, labels, saliency
        self.transform, self.to_tensor, self.seed = transform, to_tensor, int(seed)
        self._generator: torch.Generator | None = None
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    def _partner(self) -> int:
        info = torch.utils.data.get_worker_info()
        worker_seed = None if info is None else int(info.seed)
        if self._generator is None or worker_seed != self._worker_seed:
            self._worker_seed = worker_seed
            self._generator = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + (worker_seed or 0)) % 2**63
            )
        return int(torch.randint(len(self), (1,), generator=self._generator))

    def _map(self, index: int) -> np.ndarray:
        value = self.saliency[index]
        return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float32)

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        partner = self._partner()
        metadata = {
            "image": np.asarray(self.images[partner]),
            "label": int(self.labels[partner]),
            "saliency": self._map(partner),
            "anchor_saliency": self._map(index),
        }
        out = self.transform(
            image=np.asarray(self.images[index]), label=int(self.labels[index]), sage_metadata=metadata
        )
        image = out["image"] if self.to_tensor is None else self.to_tensor(out["image"])
        return image, out["label"]
