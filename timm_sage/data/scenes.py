"""``fashion_mnist_scenes``: Fashion-MNIST garments placed off-centre on natural photographs, among clutter.

A benchmark where saliency should matter (docs/results.md): each image is an RGB canvas with one
garment (the labelled object) whose square frame covers ``min_area``-``max_area`` of it, at a random
position, in a random colour, composited with its own intensity as alpha over a random crop (random
scale, random flip) of a photograph, with a few clutter objects underneath (``clutter``: soft coloured
ellipses that cannot be mistaken for a garment, the default since generator version 2; fragments of other
garments, version 1's clutter; or none). The defaults are the version-2 benchmark; the version-1 scenes
(32 px, fragments of garments) stay reachable with :data:`SCENES_V1`. Training,
validation and test backgrounds come from **disjoint** photographs (``PHOTOGRAPHS``), so a model cannot
win by memorising backgrounds. The generator knows each object's exact mask (its alpha, kept as uint8).

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed`` and the split, so a set is a
pure function of its :class:`SceneParams`; it is cached on disk as uint8 arrays keyed by those
parameters. The photographs come from scikit-image's ``skimage.data`` (shipped in its wheel, no
download); scikit-image is needed only to generate, an optional extra (``pip install timm-sage[scenes]``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from timm_sage._atomic import atomic_open
from timm_sage.core import checks

__all__ = [
    "CLUTTER_KINDS", "PHOTOGRAPHS", "SCENES_V1", "SceneParams", "SceneSplit", "cache_dir", "generate_split",
    "load_scenes",
]  # fmt: skip

# Part of the cache key: bump when the drawing changes. 2: the clutter kinds (blobs, none); with
# clutter "garments" version 2 draws exactly version 1's scenes.
GENERATOR_VERSION = 2
CLUTTER_KINDS = ("blobs", "garments", "none")

# Disjoint photographs per split (all ship inside scikit-image's wheel). Each group mixes textures and
# scenes, colour and grey.
PHOTOGRAPHS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "brick", "coffee", "grass", "hubble_deep_field", "moon", "retina", "page"),
    "val": ("camera", "coins", "text", "cell", "colorwheel"),
    "test": ("chelsea", "gravel", "rocket", "clock", "immunohistochemistry"),
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SceneParams:
    """The generator's parameters (``timm-sage train`` keys ``scenes_<name>``); validated at construction.

    ``canvas``: side of the square RGB image, px. ``min_area`` / ``max_area``: the garment's square
    frame covers this share of the canvas (drawn uniformly; 0.12-0.42 is a frame side of 35-65 % of the
    canvas). ``min_crop`` / ``max_crop``: the background crop's side as a share of the photograph's
    shorter side (random scale). ``clutter``: what lies under the garment, one of :data:`CLUTTER_KINDS`:
    ``"blobs"`` (soft ellipses in random colours, partly transparent), ``"garments"`` (random
    quarter-to-half crops of other garments, version 1) or ``"none"``. ``fragments``: at most this many
    clutter objects per image (drawn in 0..fragments), each ``fragment_area`` of the canvas (a blob's
    bounding box, a fragment's square). ``train_size`` / ``val_size``: class-balanced
    images drawn from Fashion-MNIST's training set (disjoint), ``test_size``: from its test set
    (0: all 10,000). ``seed``: of every draw.
    """

    canvas: int = 40
    min_area: float = 0.12
    max_area: float = 0.42
    min_crop: float = 0.15
    max_crop: float = 0.60
    clutter: str = "blobs"
    fragments: int = 3
    fragment_area: float = 0.06
    train_size: int = 4000
    val_size: int = 2000
    test_size: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("canvas", "train_size", "val_size"):
            checks.check_positive_int(f"scenes_{name}", getattr(self, name))
        for name in ("fragments", "test_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"scenes_{name} must be a non-negative int, got {value!r}")
        if self.canvas < 16:
            raise ValueError(f"scenes_canvas must be at least 16 px, got {self.canvas}")
        for name in ("min_area", "max_area", "min_crop", "max_crop", "fragment_area"):
            checks.check_fraction(f"scenes_{name}", getattr(self, name), open_low=True)
        if not isinstance(self.clutter, str) or self.clutter not in CLUTTER_KINDS:
            kinds = ", ".join(CLUTTER_KINDS)
            raise ValueError(f"scenes_clutter must be one of {kinds}, got {self.clutter!r}")
        if self.min_area > self.max_area:
            raise ValueError(f"scenes_min_area ({self.min_area}) exceeds scenes_max_area ({self.max_area})")
        if self.min_crop > self.max_crop:
            raise ValueError(f"scenes_min_crop ({self.min_crop}) exceeds scenes_max_crop ({self.max_crop})")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def key(self) -> str:
        """Cache key: a hash of every parameter and the generator's version."""
        text = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# The version-1 scenes (the 500-image study of docs/results.md): 32 px, frames of 10-40 % of the canvas,
# fragments of other garments as clutter, a 5,000-image training pool. SceneParams(**SCENES_V1).
SCENES_V1: dict[str, object] = {
    "canvas": 32, "min_area": 0.10, "max_area": 0.40, "clutter": "garments", "train_size": 5000,
    "val_size": 2000,
}  # fmt: skip


@dataclass
class SceneSplit:
    """One split: ``images`` (N, 3, S, S) uint8, ``masks`` (N, S, S) uint8 (the object's alpha, 0-255),
    ``labels`` (N,) int64, ``sources`` (N,) int64 (the Fashion-MNIST index of each garment)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    sources: torch.Tensor


def cache_dir() -> Path:
    """``$TIMM_SAGE_CACHE/scenes`` (default ``~/.cache/timm_sage/scenes``)."""
    root = os.environ.get("TIMM_SAGE_CACHE") or Path.home() / ".cache" / "timm_sage"
    return Path(root) / "scenes"


def _photographs(split: str) -> list[np.ndarray]:
    try:
        import skimage.data
    except ImportError as error:  # pragma: no cover - the extra is installed in the test environment
        raise ImportError(
            "dataset fashion_mnist_scenes is generated from scikit-image's sample photographs: "
            "pip install 'timm-sage[scenes]' (or scikit-image) once; the generated set is then cached"
        ) from error
    photos = []
    for name in PHOTOGRAPHS[split]:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[..., :3].astype(np.uint8)))
    return photos


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w[, c]) uint8 or float -> (size, size[, c]) float32, bilinear with antialiasing."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out[0, 0] if image.ndim == 2 else out[0].permute(1, 2, 0)
    return out.numpy()


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright random colour (HSV: any hue, saturation 0.5-1, value 0.6-1) as RGB in [0, 255]."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    rgb = val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (255 * rgb).astype(np.float32)


def _background(rng: np.random.Generator, photos: list[np.ndarray], params: SceneParams) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    height, width = photo.shape[:2]
    side = int(round(min(height, width) * rng.uniform(params.min_crop, params.max_crop)))
    side = max(side, 8)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = photo[top : top + side, left : left + side]
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    return _resize(crop, params.canvas)


def _paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, colour: np.ndarray, top: int, left: int):
    """Composite ``colour`` with ``alpha`` (h, w) in [0, 1] over ``canvas`` (S, S, 3) at (top, left),
    shading the colour by the garment's intensity ``patch`` (h, w) in [0, 1]; in place."""
    h, w = alpha.shape
    region = canvas[top : top + h, left : left + w]
    shade = (0.35 + 0.65 * patch)[..., None] * colour
    region[:] = alpha[..., None] * shade + (1 - alpha[..., None]) * region


def _garment_fragment(
    canvas: np.ndarray, garments: np.ndarray, rng: np.random.Generator, params: SceneParams
) -> None:
    """Version 1's clutter: a random quarter-to-half crop of another garment, in place."""
    size = params.canvas
    other = garments[int(rng.integers(len(garments)))].astype(np.float32) / 255
    ch, cw = (int(rng.integers(7, 15)) for _ in range(2))
    top, left = int(rng.integers(0, 28 - ch + 1)), int(rng.integers(0, 28 - cw + 1))
    piece = other[top : top + ch, left : left + cw]
    side = max(3, int(round(size * np.sqrt(params.fragment_area))))
    piece = np.clip(_resize(piece, side), 0, 1)
    y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    _paste(canvas, piece, piece, _colour(rng), y, x)


def _blob(canvas: np.ndarray, rng: np.random.Generator, params: SceneParams) -> None:
    """A soft ellipse (aspect 1:2 to 2:1, bounding box ``fragment_area`` of the canvas) in a random colour,
    40-80 % opaque, in place: clutter with no garment's outline, so it cannot be mistaken for the label."""
    size = params.canvas
    side = max(3.0, size * np.sqrt(params.fragment_area))
    aspect = np.exp(rng.uniform(-np.log(2), np.log(2)))
    ry, rx = side / 2 * np.sqrt(aspect), side / 2 / np.sqrt(aspect)
    cy, cx = rng.uniform(0, size), rng.uniform(0, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    alpha = np.clip((1.0 - radius) * 3.0, 0, 1) * rng.uniform(0.4, 0.8)  # a soft edge, a third of the radius
    _paste(canvas, np.ones_like(alpha), alpha.astype(np.float32), _colour(rng), 0, 0)


def render(
    garments: np.ndarray, index: int, rng: np.random.Generator, photos: list[np.ndarray], params: SceneParams
) -> tuple[np.ndarray, np.ndarray]:
    """One scene from ``garments[index]`` ((N, 28, 28) uint8): (image (S, S, 3) uint8, mask (S, S) uint8)."""
    size = params.canvas
    canvas = _background(rng, photos, params)
    if params.clutter != "none":
        for _ in range(int(rng.integers(0, params.fragments + 1))):
            if params.clutter == "garments":
                _garment_fragment(canvas, garments, rng, params)
            else:
                _blob(canvas, rng, params)
    area = rng.uniform(params.min_area, params.max_area)
    side = min(size, max(4, int(round(size * np.sqrt(area)))))
    garment = np.clip(_resize(garments[index].astype(np.float32) / 255, side), 0, 1)
    if rng.uniform() < 0.5:
        garment = garment[:, ::-1]
    y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    _paste(canvas, garment, garment, _colour(rng), y, x)
    mask = np.zeros((size, size), dtype=np.float32)
    mask[y : y + side, x : x + side] = garment
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return image, np.clip(np.round(mask * 255), 0, 255).astype(np.uint8)


def _balanced(labels: np.ndarray, size: int, rng: np.random.Generator, exclude: np.ndarray | None = None):
    """``size`` indices, class-balanced (remainder to the first classes), none of ``exclude``; sorted."""
    pool = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        pool[exclude] = False
    classes = np.unique(labels)
    base, extra = divmod(size, len(classes))
    chosen = []
    for position, cls in enumerate(classes):
        members = np.flatnonzero(pool & (labels == cls))
        take = base + (1 if position < extra else 0)
        if take > len(members):
            raise ValueError(f"scenes: class {cls} has only {len(members)} images for {take}")
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen))


def generate_split(
    split: str, garments: np.ndarray, labels: np.ndarray, sources: np.ndarray, params: SceneParams,
    progress: bool = False,
) -> SceneSplit:  # fmt: skip
    """Render every garment of ``sources`` (indices into ``garments``) on the ``split``'s photographs."""
    from tqdm import tqdm

    photos = _photographs(split)
    rng = np.random.default_rng([params.seed, SPLITS.index(split), 7])
    size = params.canvas
    images = np.empty((len(sources), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(sources), size, size), dtype=np.uint8)
    for row, index in enumerate(tqdm(sources, desc=f"scenes {split}", disable=not progress, unit="img")):
        image, mask = render(garments, int(index), rng, photos, params)
        images[row] = image.transpose(2, 0, 1)
        masks[row] = mask
    return SceneSplit(
        torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(labels[sources].astype(np.int64)),
        torch.from_numpy(sources.astype(np.int64)),
    )  # fmt: skip


def load_scenes(
    params: SceneParams, data_dir: str | Path | None = None, *, progress: bool = True
) -> dict[str, SceneSplit]:
    """The three splits of ``params``, from the cache or generated (then cached atomically).

    Args:
        params: the generator's parameters. data_dir: the Fashion-MNIST idx folder (default: Debian's).
    Returns:
        ``{"train", "val", "test"}`` -> :class:`SceneSplit`.
    """
    from timm_sage.data import idx as _idx

    path = cache_dir() / f"fashion_mnist_scenes-{params.key()}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {
                split: SceneSplit(
                    *(torch.from_numpy(stored[f"{split}_{part}"]) for part in SceneSplit.__annotations__)
                )
                for split in SPLITS
            }  # fmt: skip
    root = Path(data_dir) if data_dir else _idx.FASHION_MNIST_ROOT
    train_x, train_y = _idx.load_idx_split(root, "train")
    test_x, test_y = _idx.load_idx_split(root, "test")
    rng = np.random.default_rng([params.seed, 11])
    train_sources = _balanced(train_y, params.train_size, rng)
    val_sources = _balanced(train_y, params.val_size, rng, exclude=train_sources)
    test_sources = (
        np.arange(len(test_y)) if params.test_size == 0 else _balanced(test_y, params.test_size, rng)
    )
    splits = {
        "train": generate_split("train", train_x, train_y, train_sources, params, progress),
        "val": generate_split("val", train_x, train_y, val_sources, params, progress),
        "test": generate_split("test", test_x, test_y, test_sources, params, progress),
    }
    arrays = {
        f"{split}_{part}": getattr(data, part).numpy()
        for split, data in splits.items()
        for part in SceneSplit.__annotations__
    }
    with atomic_open(path) as handle:
        np.savez(handle, **arrays)
    return splits
