"""``fashion_mnist_scenes``: Fashion-MNIST garments placed off-centre on natural photographs, among clutter.

A benchmark where saliency should matter (docs/results.md): each image is an RGB canvas with one
garment (the labelled object) whose square frame covers ``min_area``-``max_area`` of it, at a random
position, in a random colour, composited with its own intensity as alpha over a random crop (random
scale, random flip) of a photograph, with a few clutter objects underneath (``clutter``: soft coloured
ellipses that cannot be mistaken for a garment, the default since generator version 2; fragments of other
garments, version 1's clutter; or none). The generator knows each object's exact mask (its alpha, kept as
uint8) and the photograph under each image (``SceneSplit.photos``).

Where the backgrounds come from (``photos``):

* ``"skimage"`` (versions 1 and 2, the default of :class:`SceneParams`): 18 of scikit-image's sample
  photographs; training, validation and test backgrounds come from **disjoint** photographs
  (``PHOTOGRAPHS``, 8 / 5 / 5). Five photographs make a noisy test set (docs/results.md).
* ``"pooled"`` (version 3, :data:`SCENES_V3`): 62 wallpapers (photographs and artwork) from three Debian
  packages plus the 8 training photographs of scikit-image, in two pools (``POOLS``): a training pool
  (39) and a held-out pool (31). Validation and test come from the **same** held-out photographs, from
  spatially disjoint halves of each (``_halves``), so the two splits judge the same task; a fourth split,
  ``test_disjoint``, renders the test garments on version 2's five test photographs, a separately reported
  robustness score. Licences: docs/studies/scenes3/PHOTOGRAPHS.md.

The version-1 scenes (32 px, fragments of garments) stay reachable with :data:`SCENES_V1`, version 2 with
the defaults of :class:`SceneParams`; both bit for bit (tests/test_scenes.py).

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed`` and the split, so a set is a
pure function of its :class:`SceneParams`; it is cached on disk as uint8 arrays keyed by those
parameters. scikit-image's photographs ship in its wheel (no download); scikit-image is needed only to
generate, an optional extra (``pip install timm-sage[scenes]``). The pooled wallpapers install offline
from Debian's archive: ``apt-get install plasma-workspace-wallpapers mate-backgrounds ukui-wallpapers``
(``make data`` does it); their files are checked against the SHA-256 recorded in ``WALLPAPERS``.
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
    "CLUTTER_KINDS", "PHOTO_SETS", "PHOTOGRAPHS", "POOLS", "SCENES_V1", "SCENES_V3", "WALLPAPERS",
    "SceneParams", "SceneSplit", "cache_dir", "generate_split", "load_scenes", "photograph_names",
    "split_names",
]  # fmt: skip

# Part of the cache key: bump when the drawing changes. 2: the clutter kinds (blobs, none); with
# clutter "garments" version 2 draws exactly version 1's scenes. 3: the pooled photographs (photos
# "pooled") and the photograph of each image in the cache; with photos "skimage" version 3 draws exactly
# version 2's scenes.
GENERATOR_VERSION = 3
CLUTTER_KINDS = ("blobs", "garments", "none")
PHOTO_SETS = ("skimage", "pooled")

# Disjoint photographs per split (all ship inside scikit-image's wheel). Each group mixes textures and
# scenes, colour and grey.
PHOTOGRAPHS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "brick", "coffee", "grass", "hubble_deep_field", "moon", "retina", "page"),
    "val": ("camera", "coins", "text", "cell", "colorwheel"),
    "test": ("chelsea", "gravel", "rocket", "clock", "immunohistochemistry"),
}
SPLITS = ("train", "val", "test")
POOLED_SPLITS = ("train", "val", "test", "test_disjoint")

# Version 3's wallpapers: name -> (Debian package, path under /usr/share, first 16 hex digits of the file's
# SHA-256 in Debian 12's package). Licences (each package's copyright file): plasma-workspace-wallpapers
# GPL-2+; mate-backgrounds GPL-2+ per file (Ubuntu-Mate-*-no-logo CC-BY-SA-4.0); ukui-wallpapers
# CC-BY-SA-3.0; docs/studies/scenes3/PHOTOGRAPHS.md lists them. Eight near-blank or transparent
# wallpapers of these packages are left out (flat fills would make a garment trivial to find).
_PLASMA, _MATE, _UKUI = "plasma-workspace-wallpapers", "mate-backgrounds", "ukui-wallpapers"
WALLPAPERS: dict[str, tuple[str, str, str]] = {
    "Altai": (_PLASMA, "wallpapers/Altai/contents/images/1080x1920.png", "7b992ad9ced46a85"),
    "Autumn": (_PLASMA, "wallpapers/Autumn/contents/images/1920x1080.jpg", "dfded25df13f5c2d"),
    "BytheWater": (_PLASMA, "wallpapers/BytheWater/contents/images/1920x1080.jpg", "c272434ef39f2abf"),
    "Canopee": (_PLASMA, "wallpapers/Canopee/contents/images/3840x2160.png", "c538a5a7f7f78fbc"),
    "Cascade": (_PLASMA, "wallpapers/Cascade/contents/images/3840x2160.png", "1915b53a6c067959"),
    "Cluster": (_PLASMA, "wallpapers/Cluster/contents/images/3840x2160.png", "e3e77c68791e1b7c"),
    "ColdRipple": (_PLASMA, "wallpapers/ColdRipple/contents/images/1920x1080.jpg", "05bef6722fc0ed81"),
    "ColorfulCups": (_PLASMA, "wallpapers/ColorfulCups/contents/images/2560x1600.jpg", "6e0f3a72feb5a4a9"),
    "DarkestHour": (_PLASMA, "wallpapers/DarkestHour/contents/images/1920x1080.jpg", "8e3703fae3a3c217"),
    "Elarun": (_PLASMA, "wallpapers/Elarun/contents/images/2560x1600.png", "ce4d7a22554fdc4d"),
    "EveningGlow": (_PLASMA, "wallpapers/EveningGlow/contents/images/1920x1080.jpg", "586682dcb362b9f6"),
    "FallenLeaf": (_PLASMA, "wallpapers/FallenLeaf/contents/images/1920x1080.jpg", "95603a6560c7e8d5"),
    "Flow": (_PLASMA, "wallpapers/Flow/contents/images/720x1440.jpg", "0c9f6ad4b89f735c"),
    "FlyingKonqui": (_PLASMA, "wallpapers/FlyingKonqui/contents/images/1920x1080.png", "856ecdf80b825375"),
    "Grey": (_PLASMA, "wallpapers/Grey/contents/images/1920x1080.jpg", "88c31d8944b7e693"),
    "Honeywave": (_PLASMA, "wallpapers/Honeywave/contents/images/1080x1920.jpg", "c938edd7e94d7cc5"),
    "IceCold": (_PLASMA, "wallpapers/IceCold/contents/images/5120x2880.png", "4f000813086b839f"),
    "Kay": (_PLASMA, "wallpapers/Kay/contents/images/1080x1920.png", "b7b2d58247e1cbb2"),
    "Kite": (_PLASMA, "wallpapers/Kite/contents/images/1920x1080.jpg", "bdca288ce296a981"),
    "Kokkini": (_PLASMA, "wallpapers/Kokkini/contents/images/3840x2160.png", "ba6fbd6ca54e4fef"),
    "MilkyWay": (_PLASMA, "wallpapers/MilkyWay/contents/images/1080x1920.png", "bccfdb78f772cf60"),
    "OneStandsOut": (_PLASMA, "wallpapers/OneStandsOut/contents/images/1920x1080.jpg", "cb507baf1dafdcae"),
    "Opal": (_PLASMA, "wallpapers/Opal/contents/images/3840x2160.png", "bdc37f083dd498c5"),
    "PastelHills": (_PLASMA, "wallpapers/PastelHills/contents/images/1920x1080.jpg", "8a5f3dc3ddc75687"),
    "Patak": (_PLASMA, "wallpapers/Patak/contents/images/1080x1920.png", "a7969c6b25a55f0d"),
    "Path": (_PLASMA, "wallpapers/Path/contents/images/1920x1080.jpg", "7477457d7f17b736"),
    "SafeLanding": (_PLASMA, "wallpapers/SafeLanding/contents/images/1622x2880.jpg", "33317a403e96f76a"),
    "Shell": (_PLASMA, "wallpapers/Shell/contents/images/720x1440.jpg", "4dc9d13e897bf2e8"),
    "Volna": (_PLASMA, "wallpapers/Volna/contents/images/5120x2880.jpg", "abc30b4fc6f6a83b"),
    "summer_1am": (_PLASMA, "wallpapers/summer_1am/contents/images/1920x1080.jpg", "c868b50789591dd4"),
    "2004default": (_UKUI, "backgrounds/2004default.jpg", "3a9ce649f4cc97be"),
    "calla": (_UKUI, "backgrounds/calla.png", "26fc5b5461f37132"),
    "city": (_UKUI, "backgrounds/city.png", "7d7d048f935a7ca9"),
    "desert": (_UKUI, "backgrounds/desert.png", "e4247a65a08bdf23"),
    "firstgeneration": (_UKUI, "backgrounds/firstgeneration.jpg", "177f1f8cf97dce50"),
    "fluent-color": (_UKUI, "backgrounds/fluent-color.png", "d8c185c623cdacf3"),
    "focal-ubuntukylin": (_UKUI, "backgrounds/focal-ubuntukylin.png", "3590397864dfceb1"),
    "goldfish": (_UKUI, "backgrounds/goldfish.png", "a01ef5d91bfe63fd"),
    "rhythm": (_UKUI, "backgrounds/rhythm.jpg", "7ed93d313b3a699b"),
    "rollpaper": (_UKUI, "backgrounds/rollpaper.png", "6928e4ae7483a4df"),
    "string": (_UKUI, "backgrounds/string.jpg", "73fd26471a45955d"),
    "the-mouse": (_UKUI, "backgrounds/the-mouse.jpg", "e4717d5cb7dd3ed1"),
    "Elephants": (_MATE, "backgrounds/mate/abstract/Elephants.jpg", "b402668de7212c56"),
    "mate-Flow": (_MATE, "backgrounds/mate/abstract/Flow.png", "36d494feb16dd335"),
    "Gulp": (_MATE, "backgrounds/mate/abstract/Gulp.png", "2d221c435d18b55f"),
    "Float-into-MATE": (_MATE, "backgrounds/mate/desktop/Float-into-MATE.png", "bfef36b60aea94fc"),
    "Stripes": (_MATE, "backgrounds/mate/desktop/Stripes.png", "5038a2983979324e"),
    "Ubuntu-Mate-Cold": (_MATE, "backgrounds/mate/desktop/Ubuntu-Mate-Cold-no-logo.png", "15028ca8e851921a"),
    "Ubuntu-Mate-Radioactive": (
        _MATE, "backgrounds/mate/desktop/Ubuntu-Mate-Radioactive-no-logo.png", "3964b05e9b9645c8"
    ),
    "Ubuntu-Mate-Warm": (_MATE, "backgrounds/mate/desktop/Ubuntu-Mate-Warm-no-logo.png", "4f820953263548c6"),
    "Aqua": (_MATE, "backgrounds/mate/nature/Aqua.jpg", "5c30118205982da4"),
    "Blinds": (_MATE, "backgrounds/mate/nature/Blinds.jpg", "f7aac0dcc2e06d04"),
    "Dune": (_MATE, "backgrounds/mate/nature/Dune.jpg", "8a67c2cb0be8c46b"),
    "FreshFlower": (_MATE, "backgrounds/mate/nature/FreshFlower.jpg", "972b0a0c4e5e3fa9"),
    "Garden": (_MATE, "backgrounds/mate/nature/Garden.jpg", "d3095ee09d425ef2"),
    "GreenMeadow": (_MATE, "backgrounds/mate/nature/GreenMeadow.jpg", "8fa0de0aa4089f73"),
    "LadyBird": (_MATE, "backgrounds/mate/nature/LadyBird.jpg", "e35a9a4126ef969c"),
    "RainDrops": (_MATE, "backgrounds/mate/nature/RainDrops.jpg", "3e4ea9671c28c90a"),
    "Storm": (_MATE, "backgrounds/mate/nature/Storm.jpg", "77ca53077831d323"),
    "TwoWings": (_MATE, "backgrounds/mate/nature/TwoWings.jpg", "665e5abf8a539907"),
    "Wood": (_MATE, "backgrounds/mate/nature/Wood.jpg", "19c78500ac00a622"),
    "YellowFlower": (_MATE, "backgrounds/mate/nature/YellowFlower.jpg", "254da96256acb7ad"),
}
WALLPAPER_PACKAGES = (_PLASMA, _MATE, _UKUI)
# Version 3's pools. The wallpapers were sorted into photographs (24) and artwork (38) by eye and each kind
# dealt alternately to the two pools, so each pool holds both kinds in the same proportion; the training
# pool also takes version 2's eight training photographs of scikit-image ("skimage:" names).
POOLS: dict[str, tuple[str, ...]] = {
    "train": (
        "BytheWater", "ColorfulCups", "EveningGlow", "Grey", "OneStandsOut", "summer_1am", "Aqua", "Dune",
        "Garden", "LadyBird", "Storm", "Wood",
        "Altai", "Canopee", "Cluster", "Flow", "Honeywave", "Kay", "MilkyWay", "PastelHills", "SafeLanding",
        "2004default", "city", "firstgeneration", "focal-ubuntukylin", "rhythm", "string", "Elephants",
        "Gulp", "Stripes", "Ubuntu-Mate-Radioactive",
        *(f"skimage:{name}" for name in PHOTOGRAPHS["train"]),
    ),
    "heldout": (
        "ColdRipple", "DarkestHour", "FallenLeaf", "Kite", "Path", "Volna", "Blinds", "FreshFlower",
        "GreenMeadow", "RainDrops", "TwoWings", "YellowFlower",
        "Autumn", "Cascade", "Elarun", "FlyingKonqui", "IceCold", "Kokkini", "Opal", "Patak", "Shell",
        "calla", "desert", "fluent-color", "goldfish", "rollpaper", "the-mouse", "mate-Flow",
        "Float-into-MATE", "Ubuntu-Mate-Cold", "Ubuntu-Mate-Warm",
    ),
}  # fmt: skip
# Photographs are stored with this shorter side (px) before any crop: the crops of a 40 px canvas take
# 15-60 % of it, so this keeps every crop downsampled, never upsampled.
POOLED_SIDE = 256


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
    (0: all 10,000). ``photos``: where the backgrounds come from, one of :data:`PHOTO_SETS` (the module's
    docstring). ``seed``: of every draw.
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
    photos: str = "skimage"

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
        if not isinstance(self.photos, str) or self.photos not in PHOTO_SETS:
            raise ValueError(f"scenes_photos must be one of {', '.join(PHOTO_SETS)}, got {self.photos!r}")
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

# The version-3 benchmark (docs/studies/scenes3): version 2's scenes on the pooled photographs, with
# 16,000 training images (with 4,000 every set-up tried stayed at chance for 4-10 epochs).
SCENES_V3: dict[str, object] = {"photos": "pooled", "train_size": 16000}


def split_names(params: SceneParams) -> tuple[str, ...]:
    """The splits :func:`load_scenes` returns for ``params``: train, val, test (and test_disjoint, pooled)."""
    return POOLED_SPLITS if params.photos == "pooled" else SPLITS


def photograph_names(params: SceneParams, split: str) -> list[str]:
    """The names of the photographs under ``split``'s images, in the order of ``SceneSplit.photos``;
    held-out pooled photographs carry the half they come from (``"Kite[left]"``)."""
    if params.photos == "skimage":
        return list(PHOTOGRAPHS[split])
    if split == "train":
        return list(POOLS["train"])
    if split == "test_disjoint":
        return [f"skimage:{name}" for name in PHOTOGRAPHS["test"]]
    return [f"{name}[{_half_name(index, split)}]" for index, name in enumerate(POOLS["heldout"])]


@dataclass
class SceneSplit:
    """One split: ``images`` (N, 3, S, S) uint8, ``masks`` (N, S, S) uint8 (the object's alpha, 0-255),
    ``labels`` (N,) int64, ``sources`` (N,) int64 (the Fashion-MNIST index of each garment), ``photos``
    (N,) int64 (the index of each image's background in :func:`photograph_names`)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    sources: torch.Tensor
    photos: torch.Tensor


def cache_dir() -> Path:
    """``$TIMM_SAGE_CACHE/scenes`` (default ``~/.cache/timm_sage/scenes``)."""
    root = os.environ.get("TIMM_SAGE_CACHE") or Path.home() / ".cache" / "timm_sage"
    return Path(root) / "scenes"


def _skimage_photograph(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as error:  # pragma: no cover - the extra is installed in the test environment
        raise ImportError(
            "dataset fashion_mnist_scenes is generated from scikit-image's sample photographs: "
            "pip install 'timm-sage[scenes]' (or scikit-image) once; the generated set is then cached"
        ) from error
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def wallpaper_root() -> Path:
    """Where the Debian wallpaper packages install (``$TIMM_SAGE_WALLPAPERS``, default ``/usr/share``)."""
    return Path(os.environ.get("TIMM_SAGE_WALLPAPERS") or "/usr/share")


def _wallpaper(name: str) -> np.ndarray:
    """A pooled wallpaper as (h, w, 3) uint8 with its shorter side :data:`POOLED_SIDE` px."""
    from PIL import Image

    package, relative, digest = WALLPAPERS[name]
    path = wallpaper_root() / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"scenes_photos 'pooled' needs {path} from the Debian package {package}: install the wallpapers "
            f"once with `apt-get install {' '.join(WALLPAPER_PACKAGES)}` (or `make data`), or point "
            "TIMM_SAGE_WALLPAPERS at a folder holding the same files"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest()[:16] != digest:
        raise ValueError(
            f"scenes_photos 'pooled': {path} differs from the file the benchmark was built on (package "
            f"{package} of Debian 12, SHA-256 {digest}...): the scenes would not be the benchmark's"
        )
    with Image.open(path) as opened:
        image = np.array(opened.convert("RGB"))  # a writable copy for torch.from_numpy
    height, width = image.shape[:2]
    scale = POOLED_SIDE / min(height, width)
    size = (max(POOLED_SIDE, round(height * scale)), max(POOLED_SIDE, round(width * scale)))
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _photograph(name: str) -> np.ndarray:
    if name.startswith("skimage:"):
        return _skimage_photograph(name.removeprefix("skimage:"))
    return _wallpaper(name)


def _half_name(index: int, split: str) -> str:
    """Which half of held-out photograph ``index`` a split draws from: validation takes the first half
    (left, or top of a portrait photograph) of even-numbered photographs and the second of odd-numbered
    ones, test the other, so neither split sits on one side of every photograph."""
    first = (index % 2 == 0) == (split == "val")
    return "first" if first else "second"


def _halves(photo: np.ndarray, half: str) -> np.ndarray:
    """The first or second half of ``photo`` (h, w, 3) along its longer side."""
    height, width = photo.shape[:2]
    if width >= height:
        return photo[:, : width // 2] if half == "first" else photo[:, width // 2 :]
    return photo[: height // 2] if half == "first" else photo[height // 2 :]


def _photographs(split: str, photos: str = "skimage") -> list[np.ndarray]:
    """The background photographs of ``split`` for the photograph set ``photos``."""
    if photos == "skimage":
        return [_skimage_photograph(name) for name in PHOTOGRAPHS[split]]
    if split == "train":
        return [_photograph(name) for name in POOLS["train"]]
    if split == "test_disjoint":
        return [_skimage_photograph(name) for name in PHOTOGRAPHS["test"]]
    if split not in ("val", "test"):
        raise ValueError(f"split must be one of {', '.join(POOLED_SPLITS)}, got {split!r}")
    held = [_photograph(name) for name in POOLS["heldout"]]
    return [np.ascontiguousarray(_halves(photo, _half_name(i, split))) for i, photo in enumerate(held)]


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


def _background(
    rng: np.random.Generator, photos: list[np.ndarray], params: SceneParams
) -> tuple[np.ndarray, int]:
    choice = int(rng.integers(len(photos)))
    photo = photos[choice]
    height, width = photo.shape[:2]
    side = int(round(min(height, width) * rng.uniform(params.min_crop, params.max_crop)))
    side = max(side, 8)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = photo[top : top + side, left : left + side]
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    return _resize(crop, params.canvas), choice


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
    """One scene from ``garments[index]`` ((N, 28, 28) uint8): image (S, S, 3) uint8, mask (S, S) uint8
    and the index of its background in ``photos``."""
    size = params.canvas
    canvas, photo = _background(rng, photos, params)
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
    return image, np.clip(np.round(mask * 255), 0, 255).astype(np.uint8), photo


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

    photos = _photographs(split, params.photos)
    rng = np.random.default_rng([params.seed, POOLED_SPLITS.index(split), 7])
    size = params.canvas
    images = np.empty((len(sources), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(sources), size, size), dtype=np.uint8)
    chosen = np.empty(len(sources), dtype=np.int64)
    for row, index in enumerate(tqdm(sources, desc=f"scenes {split}", disable=not progress, unit="img")):
        image, mask, chosen[row] = render(garments, int(index), rng, photos, params)
        images[row] = image.transpose(2, 0, 1)
        masks[row] = mask
    return SceneSplit(
        torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(labels[sources].astype(np.int64)),
        torch.from_numpy(sources.astype(np.int64)), torch.from_numpy(chosen),
    )  # fmt: skip


def load_scenes(
    params: SceneParams, data_dir: str | Path | None = None, *, progress: bool = True
) -> dict[str, SceneSplit]:
    """The three splits of ``params``, from the cache or generated (then cached atomically).

    Args:
        params: the generator's parameters. data_dir: the Fashion-MNIST idx folder (default: Debian's).
    Returns:
        :func:`split_names` (``train``, ``val``, ``test``; and ``test_disjoint`` with the pooled
        photographs) -> :class:`SceneSplit`.
    """
    from timm_sage.data import idx as _idx

    path = cache_dir() / f"fashion_mnist_scenes-{params.key()}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {
                split: SceneSplit(
                    *(torch.from_numpy(stored[f"{split}_{part}"]) for part in SceneSplit.__annotations__)
                )
                for split in split_names(params)
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
    if params.photos == "pooled":
        splits["test_disjoint"] = generate_split(
            "test_disjoint", test_x, test_y, test_sources, params, progress
        )
    arrays = {
        f"{split}_{part}": getattr(data, part).numpy()
        for split, data in splits.items()
        for part in SceneSplit.__annotations__
    }
    with atomic_open(path) as handle:
        np.savez(handle, **arrays)
    return splits
