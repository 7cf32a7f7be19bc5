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
    image, mask = scenes.render(_garments(), 3, np.random.default_rng(1), photos, params)
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
            image, mask = scenes.render(garments, index, np.random.default_rng(index), photos, params)
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
    ],
)
def test_bad_parameters_name_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def _changed(value):
    if isinstance(value, str):
        return next(kind for kind in scenes.CLUTTER_KINDS if kind != value)
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
