"""``timm-sage scenes``: build (or load from the cache) the ``fashion_mnist_scenes`` set, print its
statistics, and draw a grid of samples with their object masks, one band per split."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from timm_sage.data import scenes
from timm_sage.data.idx import FASHION_MNIST_CLASSES


def _params(assignments: list[str]) -> scenes.SceneParams:
    fields = {f.name: f for f in dataclasses.fields(scenes.SceneParams)}
    values = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("scenes_")
        if not sep or key not in fields:
            raise ValueError(f"--set expects NAME=VALUE with NAME one of {', '.join(fields)}, got {item!r}")
        values[key] = type(fields[key].default)(value)
    return scenes.SceneParams(**values)


def plot_samples(
    splits: dict[str, scenes.SceneSplit], path: Path, count: int = 8, photo_names: dict | None = None
) -> Path:
    """PNG: for each split, a row of ``count`` images and beneath it their masks, titled by class (and by
    the background's photograph, where ``photo_names`` {split: names} is given)."""
    from timm_sage.tools.plots import _pyplot, save_figure_atomic

    plt = _pyplot()
    tall = 3.3 if photo_names is not None else 2.7  # room for the second title line
    figure, axes = plt.subplots(2 * len(splits), count, figsize=(1.3 * count, tall * len(splits)))
    for row, (name, split) in enumerate(splits.items()):
        for column in range(count):
            image_axis, mask_axis = axes[2 * row, column], axes[2 * row + 1, column]
            image_axis.imshow(split.images[column].permute(1, 2, 0).numpy())
            mask_axis.imshow(split.masks[column].numpy(), cmap="gray", vmin=0, vmax=255)
            title = FASHION_MNIST_CLASSES[int(split.labels[column])]
            if photo_names is not None:
                title += "\n" + photo_names[name][int(split.photos[column])].removeprefix("skimage:")[:14]
            image_axis.set_title(title, fontsize=6 if photo_names is not None else 7)
            for axis in (image_axis, mask_axis):
                axis.set_xticks([])
                axis.set_yticks([])
        axes[2 * row, 0].set_ylabel(name, fontsize=9)
        axes[2 * row + 1, 0].set_ylabel("mask", fontsize=9)
    pooled = "test_disjoint" in splits
    where = (
        "validation and test on opposite halves of the same held-out photographs; test_disjoint on "
        "photographs no split has seen"
        if pooled
        else "disjoint photographs"
    )
    figure.suptitle(f"fashion_mnist_scenes: train, validation and test ({where})", fontsize=10)
    if photo_names is not None:
        figure.subplots_adjust(hspace=0.45)
    save_figure_atomic(figure, path)
    plt.close(figure)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help=f"a generator parameter ({', '.join(scenes.SceneParams.names())}); repeatable",
    )  # fmt: skip
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder (default: Debian's)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of samples and masks per split")
    parser.add_argument("--count", type=int, default=8, help="samples per split in the figure (default 8)")


def run(args: argparse.Namespace) -> int:
    params = _params(args.set)
    splits = scenes.load_scenes(params, args.data_dir)
    print(f"fashion_mnist_scenes {params.key()} ({scenes.cache_dir()}): {dataclasses.asdict(params)}")
    for name, split in splits.items():
        share = float((split.masks.float() / 255).mean())
        print(
            f"  {name}: {tuple(split.images.shape)} images, object alpha covers {100 * share:.1f} % of pixels"
        )
    if args.figure is not None:
        if args.count < 1 or args.count > min(len(s.labels) for s in splits.values()):
            raise ValueError(f"--count must lie in [1, the smallest split's size], got {args.count}")
        names = {name: scenes.photograph_names(params, name) for name in splits}
        print(f"wrote {plot_samples(splits, args.figure, args.count, names)}")
    return 0
