"""fashion_mnist_scenes: the generator's determinism, masks, disjoint backgrounds, cache and config keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from timm_sage.data import scenes  # noqa: E402
from timm_sage.data.idx import FASHION_MNIST_ROOT  # noqa: E402
from timm_sage.train.config import load_config  # noqa: E402
from timm_sage.train.data import load_datasets  # noqa: E402

HAVE_FMNIST = (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file()
TINY = scenes.SceneParams(canvas=24, train_size=40, val_size=20, test_size=30)


def _garments(n=20):
    garments = np.zeros((n, 28, 28), dtype=np.uint8)
    garments[:, 6:22, 8:20] = 255  # an opaque block on black
    return garments


def test_render_composites_the_garment_where_its_mask_says():
    params = dataclasses.replace(TINY, fragments=0, min_area=0.25, max_area=0.25)
    photos = [np.full((64, 64, 3), 40, dtype=np.uint8)]  # a flat grey background
    image, mask, _ = scenes.render(_garments(), 3, np.random.default_rng(1), photos, params)
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8 and mask.shape == (24, 24)
    # side round(24 * 0.5) = 12: the object's frame is 12 x 12, the garment inside it
    rows, cols = np.nonzero(mask)
    assert rows.max() - rows.min() < 12 and cols.max() - cols.min() < 12
    # outside the mask the background is untouched; under a near-opaque pixel the colour dominates
    assert np.all(image[mask == 0] == 40)
    assert np.all(np.abs(image[mask >= 200].astype(int) - 40).sum(-1) > 30) and (mask >= 200).sum() > 10


def test_same_parameters_same_scenes_other_seed_other_scenes():
    garments, labels = _garments(), np.arange(20) % 10
    sources = np.arange(20)
    first = scenes.generate_split("train", garments, labels, sources, TINY)
    again = scenes.generate_split("train", garments, labels, sources, TINY)
    other = scenes.generate_split("train", garments, labels, sources, dataclasses.replace(TINY, seed=1))
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (20, 3, 24, 24) and first.labels.tolist() == labels.tolist()


def _digest(split):
    import hashlib

    return hashlib.sha256(split.images.numpy().tobytes() + split.masks.numpy().tobytes()).hexdigest()[:16]


def test_version_1_scenes_stay_reachable_bit_for_bit():
    # Digests of generator version 1's output (commit 1135d24) for these inputs, on the real photographs.
    garments = _garments()
    garments[::3, 10:14, :] = 128
    params = scenes.SceneParams(**{**scenes.SCENES_V1, "canvas": 24, "train_size": 40, "val_size": 20})
    labels, sources = np.arange(20) % 10, np.arange(20)
    assert _digest(scenes.generate_split("train", garments, labels, sources, params)) == "4a73e9c4870409be"
    assert _digest(scenes.generate_split("test", garments, labels, sources, params)) == "f44e6d0b6a1f828f"


def test_clutter_kinds_blobs_garments_and_none_differ_only_off_the_object():
    garments = _garments()
    photos = [np.full((64, 64, 3), 40, dtype=np.uint8)]  # flat grey: any change off the mask is clutter
    for kind in scenes.CLUTTER_KINDS:
        params = dataclasses.replace(TINY, clutter=kind, fragments=3)
        changed = 0
        for index in range(20):
            image, mask, _ = scenes.render(garments, index, np.random.default_rng(index), photos, params)
            changed += int(np.any(image[mask == 0] != 40))
        if kind == "none":
            assert changed == 0
        else:
            assert changed >= 10  # 0-3 clutter objects per image: most images have some
    # a blob is a smooth ellipse: no hard garment edge, its alpha at most 0.8
    canvas = np.zeros((24, 24, 3), dtype=np.float32)
    scenes._blob(canvas, np.random.default_rng(0), dataclasses.replace(TINY, fragment_area=0.2))
    assert 0 < canvas.max() <= 0.8 * 255 + 1e-3 and (canvas.sum(-1) > 0).sum() > 9


def test_splits_draw_backgrounds_from_disjoint_photographs():
    groups = [set(names) for names in scenes.PHOTOGRAPHS.values()]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1 :])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_area": 0.5, "max_area": 0.2}, "scenes_min_area"),
        ({"canvas": 8}, "scenes_canvas"),
        ({"fragments": -1}, "scenes_fragments"),
        ({"max_crop": 1.5}, "scenes_max_crop"),
        ({"clutter": "fragments"}, "scenes_clutter must be one of blobs, garments, none"),
        ({"photos": "debian"}, "scenes_photos must be one of skimage, pooled"),
    ],
)
def test_bad_parameters_name_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def _changed(value):
    if isinstance(value, str):
        choices = scenes.PHOTO_SETS if value in scenes.PHOTO_SETS else scenes.CLUTTER_KINDS
        return next(kind for kind in choices if kind != value)
    return value + 1 if isinstance(value, int) else 0.3


def test_the_cache_key_changes_with_every_parameter():
    keys = {TINY.key()} | {
        dataclasses.replace(TINY, **{f.name: _changed(f.default)}).key() for f in dataclasses.fields(TINY)
    }
    assert len(keys) == len(dataclasses.fields(TINY)) + 1


@pytest.mark.skipif(not HAVE_FMNIST, reason="no Fashion-MNIST")
def test_training_config_builds_cached_scenes_with_a_held_out_validation_split(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMM_SAGE_CACHE", str(tmp_path))
    keys = {f"scenes_{k}": v for k, v in dataclasses.asdict(TINY).items()}
    cfg = load_config(None, {"dataset": "fashion_mnist_scenes", "train_subset": 20, "val_size": 10, **keys})
    train, val, test, info = load_datasets(cfg)
    assert train.images.shape == (20, 3, 24, 24) and train.masks.shape == (20, 24, 24)
    assert val.images.shape == (10, 3, 24, 24) and test.images.shape == (30, 3, 24, 24)
    assert torch.bincount(train.labels).tolist() == [2] * 10 and info["input_size"] == [3, 24, 24]
    cached = list((tmp_path / "scenes").glob("*.npz"))
    assert len(cached) == 1 and TINY.key() in cached[0].name
    again = load_datasets(cfg)  # from the cache, identical
    assert torch.equal(again.train.images, train.images) and torch.equal(again.val.masks, val.masks)
    with pytest.raises(ValueError, match="scenes_min_area"):
        load_config(None, {"dataset": "fashion_mnist_scenes", "scenes_min_area": 0.9})


@pytest.mark.skipif(not HAVE_FMNIST, reason="no Fashion-MNIST")
def test_validation_is_held_out_from_the_training_pool():
    cfg = load_config(None, {"dataset": "fashion_mnist", "train_subset": 500, "val_size": 300})
    train, val, _, _ = load_datasets(cfg)
    assert torch.bincount(val.labels).tolist() == [30] * 10
    # no validation image is a training image (compare the pixels)
    train_rows = {bytes(image.numpy()) for image in train.images}
    assert not any(bytes(image.numpy()) in train_rows for image in val.images)
    with pytest.raises(ValueError, match="val_size"):
        load_datasets(load_config(None, {"dataset": "fashion_mnist", "train_subset": 500, "val_size": 60000}))


@pytest.mark.skipif(not HAVE_FMNIST, reason="no Fashion-MNIST")
def test_scenes_command_prints_statistics_and_draws_the_grid(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from timm_sage.tools.cli import main

    monkeypatch.setenv("TIMM_SAGE_CACHE", str(tmp_path))
    sizes = ["--set", "train_size=20", "--set", "val_size=10", "--set", "test_size=10", "--set", "canvas=24"]
    assert main(["scenes", *sizes, "--figure", str(tmp_path / "grid.png"), "--count", "4"]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "train: (20, 3, 24, 24) images" in out and "test: (10, 3, 24, 24)" in out
    assert main(["scenes", "--set", "colour=3"]) == 2  # an unknown parameter is a named error
    assert "--set expects NAME=VALUE" in capsys.readouterr().err


def test_version_2_scenes_stay_reachable_bit_for_bit():
    # Digests of generator version 2's output (commit a7e3807, before version 3) for these inputs.
    garments, labels = _load_train_garments()
    params = scenes.SceneParams(canvas=24, train_size=40, val_size=20, test_size=30)
    sources = np.arange(30)
    digests = {
        split: _digest(scenes.generate_split(split, garments, labels, sources, params))
        for split in ("train", "val", "test")
    }
    assert digests == {"train": "468ff17df0d1b285", "val": "06b67dbec96cff7c", "test": "93dc80c37cadc5d3"}


def _load_train_garments():
    if not HAVE_FMNIST:
        pytest.skip("no Fashion-MNIST")
    from timm_sage.data.idx import load_idx_split

    return load_idx_split(FASHION_MNIST_ROOT, "train")


def test_split_records_the_photograph_under_each_image():
    garments, labels = _garments(), np.arange(20) % 10
    split = scenes.generate_split("train", garments, labels, np.arange(20), TINY)
    names = scenes.photograph_names(TINY, "train")
    assert split.photos.shape == (20,) and split.photos.dtype == torch.int64
    assert 0 <= int(split.photos.min()) and int(split.photos.max()) < len(names)
    # the recorded photograph is the one drawn: re-render one image on that photograph alone
    photos = scenes._photographs("train")
    row = 5
    rng = np.random.default_rng([TINY.seed, 0, 7])
    for index in range(row + 1):
        image, _, chosen = scenes.render(garments, index, rng, photos, TINY)
    assert chosen == int(split.photos[row]) and np.array_equal(image.transpose(2, 0, 1), split.images[row])


def test_pooled_pools_are_disjoint_and_large_and_validation_and_test_share_photographs():
    train, held = set(scenes.POOLS["train"]), set(scenes.POOLS["heldout"])
    assert not train & held and len(train) >= 25 and len(held) >= 25
    assert all(name in scenes.WALLPAPERS for name in train | held if not name.startswith("skimage:"))
    disjoint = {f"skimage:{name}" for name in scenes.PHOTOGRAPHS["test"]}
    assert not disjoint & (train | held)
    params = scenes.SceneParams(photos="pooled")
    val, test = scenes.photograph_names(params, "val"), scenes.photograph_names(params, "test")
    assert [n.split("[")[0] for n in val] == [n.split("[")[0] for n in test] == list(scenes.POOLS["heldout"])
    assert all(a != b for a, b in zip(val, test, strict=True))  # the other half of each photograph
    assert scenes.split_names(params) == ("train", "val", "test", "test_disjoint")


@pytest.mark.parametrize("shape", [(100, 160, 3), (161, 90, 3)])
def test_halves_split_a_photograph_along_its_longer_side_without_overlap(shape):
    photo = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    first, second = scenes._halves(photo, "first"), scenes._halves(photo, "second")
    assert first.size + second.size == photo.size
    assert not np.intersect1d(first, second).size  # no pixel in both
    assert min(first.shape[:2]) >= min(shape[:2]) // 2
    # validation and test take opposite halves, alternating with the photograph's index
    assert {scenes._half_name(i, "val") for i in (0, 1)} == {"first", "second"}
    assert all(scenes._half_name(i, "val") != scenes._half_name(i, "test") for i in range(4))


def test_pooled_wallpapers_missing_or_changed_are_named_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMM_SAGE_WALLPAPERS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install plasma-workspace-wallpapers"):
        scenes._wallpaper("Kite")
    path = tmp_path / scenes.WALLPAPERS["Kite"][1]
    path.parent.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8)).save(path, format="JPEG")
    with pytest.raises(ValueError, match="differs from the file the benchmark was built on"):
        scenes._wallpaper("Kite")


def test_pooled_wallpaper_is_downscaled_to_the_stored_side(tmp_path, monkeypatch):
    import hashlib

    from PIL import Image

    monkeypatch.setenv("TIMM_SAGE_WALLPAPERS", str(tmp_path))
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((512, 1024, 3), 77, dtype=np.uint8)).save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    monkeypatch.setitem(scenes.WALLPAPERS, "wide", ("a-package", "wide.png", digest))
    image = scenes._wallpaper("wide")
    assert image.shape == (scenes.POOLED_SIDE, 2 * scenes.POOLED_SIDE, 3) and image.dtype == np.uint8
    assert np.all(image == 77)


HAVE_WALLPAPERS = all((scenes.wallpaper_root() / rel).is_file() for _, rel, _ in scenes.WALLPAPERS.values())


@pytest.mark.skipif(not (HAVE_FMNIST and HAVE_WALLPAPERS), reason="no Fashion-MNIST or no Debian wallpapers")
def test_pooled_scenes_train_with_a_disjoint_test_and_accuracy_per_photograph(tmp_path, monkeypatch):
    from timm_sage.train.session import Trainer

    monkeypatch.setenv("TIMM_SAGE_CACHE", str(tmp_path))
    keys = {f"scenes_{k}": v for k, v in dataclasses.asdict(TINY).items()}
    keys["scenes_photos"] = "pooled"
    cfg = load_config(None, {
        "dataset": "fashion_mnist_scenes", "val_size": 10, "epochs": 1, "batch_size": 10,
        "model": "preactresnet18_tiny", "num_classes": 10, "output": str(tmp_path), "experiment": "p",
        **keys,
    })  # fmt: skip
    summary = Trainer(cfg, progress=False).fit()
    assert summary["test_images"] == 30 and 0 <= summary["test_disjoint_top1"] <= 100
    by_photo = summary["test_top1_by_photo"]
    assert by_photo and all(name.split("[")[0] in scenes.POOLS["heldout"] for name in by_photo)
    assert all(0 <= value <= 100 for value in by_photo.values())
