"""Datasets and the seeded batch loader of ``timm-sage train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from timm_sage.train.config import load_config
from timm_sage.train.data import (
    FASHION_MNIST_DIR,
    BatchLoader,
    ImageTensors,
    class_balanced_subset,
    crop_padding,
    load_datasets,
)


def make_image_folder(
    root: Path, classes: int = 3, per_class: int = 6, size: int = 12, test_per_class: int = 2
):
    """A small PNG ImageFolder tree root/{train,validation}/class_k/*.png; class k is brightness-coded."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("validation", test_per_class)):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = 40 + 80 * k
                pixels = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                pixels[: size // 3, : size // 3] = 255 if k % 2 else 0
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_class_balanced_subset_is_balanced_seeded_and_sorted():
    labels = torch.arange(10).repeat_interleave(50)[
        torch.randperm(500, generator=torch.Generator().manual_seed(1))
    ]
    subset = class_balanced_subset(labels, 103, seed=5)
    counts = torch.bincount(labels[subset], minlength=10)
    assert subset.numel() == 103 and counts.tolist() == [11, 11, 11] + [10] * 7
    assert torch.equal(subset, subset.sort().values) and subset.unique().numel() == 103
    assert torch.equal(subset, class_balanced_subset(labels, 103, seed=5))
    assert not torch.equal(subset, class_balanced_subset(labels, 103, seed=6))
    with pytest.raises(ValueError, match="train_subset"):
        class_balanced_subset(labels, 501, seed=0)


def _data(n: int = 20, channels: int = 2, size: int = 8) -> ImageTensors:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n) % 4, ["a", "b", "c", "d"])


def test_loader_replays_an_epoch_and_reshuffles_the_next():
    loader = BatchLoader(_data(), 6, [0.5, 0.5], [0.25, 0.25], train=True, seed=3)
    first = list(loader.batches(0))
    assert len(loader) == len(first) == 3  # drop_last for training
    again = list(loader.batches(0))
    other = list(loader.batches(1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other, strict=True))


def test_eval_loader_is_ordered_normalised_and_complete():
    data = _data()
    loader = BatchLoader(data, 6, [0.5, 0.25], [0.25, 0.5], train=False)
    batches = list(loader.batches())
    x = torch.cat([b[0] for b in batches])
    assert len(loader) == 4 and x.shape[0] == 20
    expected = (data.images.float() / 255 - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)) / torch.tensor(
        [0.25, 0.5]
    ).view(1, 2, 1, 1)
    torch.testing.assert_close(x, expected)
    assert torch.equal(torch.cat([b[1] for b in batches]), data.labels)


def test_augmentation_is_a_padded_crop_or_its_mirror():
    data = _data(n=8, channels=1, size=8)
    loader = BatchLoader(data, 8, [0.0], [1.0], train=True, seed=1, hflip=0.5)
    pad = crop_padding(8, 8)
    assert pad == 1 and crop_padding(32, 32) == 2 and crop_padding(28, 28) == 2
    x, y = next(loader.batches(0))
    images = (x * 255).round().to(torch.uint8)
    for image, label in zip(images, y, strict=True):
        source = data.images[int(label) :: 4]  # images sharing this label; find which one it came from
        padded = torch.nn.functional.pad(source, (pad, pad, pad, pad))
        found = any(
            torch.equal(candidate, padded[i, :, dy : dy + 8, dx : dx + 8])
            for i in range(source.shape[0])
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for candidate in (image, image.flip(-1))
        )
        assert found


def test_image_folder_is_decoded_resized_and_grayscaled(tmp_path):
    make_image_folder(tmp_path, classes=3, per_class=4, size=10)
    cfg = load_config(None, {"data_dir": str(tmp_path), "input_size": [1, 8, 8]})
    train, _, test, info = load_datasets(cfg)
    assert train.images.shape == (12, 1, 8, 8) and train.images.dtype == torch.uint8
    assert test.images.shape == (6, 1, 8, 8)
    assert train.classes == ["class_0", "class_1", "class_2"]
    assert torch.bincount(train.labels).tolist() == [4, 4, 4]
    assert info["input_size"] == [1, 8, 8] and len(info["mean"]) == 1
    # mean/std computed from the training pixels when the dataset has no known statistics
    assert info["mean"][0] == pytest.approx(float(train.images.float().mean() / 255), rel=1e-4)


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path):
    cfg = load_config(None, {"dataset": "fashion_mnist", "data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError) as error:
        load_datasets(cfg)
    assert "nowhere" in str(error.value) and "apt-get install dataset-fashion-mnist" in str(error.value)


def test_missing_cifar_names_the_folder(tmp_path):
    cfg = load_config(None, {"dataset": "torch/cifar100", "data_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_datasets(cfg)
    with pytest.raises(ValueError, match="data_dir"):
        load_datasets(load_config(None, {"dataset": "cifar10"}))


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST"
)
def test_fashion_mnist_subset_from_the_debian_files():
    cfg = load_config(None, {"dataset": "fashion_mnist", "train_subset": 500})
    train, _, test, info = load_datasets(cfg)
    assert train.images.shape == (500, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [50] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert info == {
        "name": "fashion_mnist", "mean": [0.286], "std": [0.353], "input_size": [1, 28, 28], "extra_tests": {}
    }
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
