"""``search_size="auto"``, the default: the exact search (the reference code's) up to 48 x 48 pixels, a
pooled grid chosen from the image size above (docs/algorithm.md, "Where we depart from the reference
code"), and one check that names the option on a bad value at every entry point."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from timm_sage import SageConfig, SageMixup, functional
from timm_sage.config import add_option_arguments, config_from_args
from timm_sage.core import search as _search
from timm_sage.train.config import _coerce


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip


def test_auto_is_the_default() -> None:
    assert SageConfig().search_size == "auto"
    assert SageMixup(mode="sage", num_classes=10).search_size == "auto"


@pytest.mark.parametrize("size", [28, 32, 40])
@pytest.mark.parametrize("ratio", [1.0, 0.7])
def test_auto_equals_the_exact_search_bit_for_bit_at_cifar_sizes(size: int, ratio: float) -> None:
    """The default call (auto) and search_size=None draw the same candidates and make the same mix."""
    x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    outputs = []
    for search_size in ("auto", None):
        model = _model()
        mixer = SageMixup(
            mode="sage", num_classes=10, model=model, seed=3, rand_pos=0.05, update_ratio=ratio,
            search_size=search_size,
        )  # fmt: skip
        mixed, target = mixer(x, y)
        outputs.append((mixed, target, mixer.last.translation, mixer.draw_sage_params(8, size, size)))
    (m0, t0, tr0, d0), (m1, t1, tr1, d1) = outputs
    assert torch.equal(m0, m1) and torch.equal(t0, t1) and torch.equal(tr0, tr1)
    assert torch.equal(d0.translations, d1.translations)
    # Not a mix that ignores the search: some image was moved.
    assert bool((tr0 != 0).any())


@given(height=st.integers(1, 700), width=st.integers(1, 700))
@settings(max_examples=300, deadline=None)
def test_auto_factor_is_the_smallest_within_the_traffic_budget(height: int, width: int) -> None:
    factor = _search.pooling_factor(height, width, "auto")

    def grid_pixels(f: int) -> int:
        return math.ceil(height / f) * math.ceil(width / f)

    budget = _search.AUTO_EXACT_SIDE**2 * height * width
    assert grid_pixels(factor) ** 2 <= budget
    assert factor == 1 or grid_pixels(factor - 1) ** 2 > budget
    if height <= 48 and width <= 48:
        assert factor == 1


def test_auto_grids_at_common_sizes() -> None:
    # The table of docs/algorithm.md, computed by hand from grid_pixels^2 <= 48^2 * image_pixels:
    # 224^2 * 48^2 = 115,605,504 -> grid side <= 103.7: 112 (f=2) too big, 75 (f=3) fits.
    expected = {32: 1, 48: 1, 49: 2, 64: 2, 128: 2, 224: 3, 384: 3, 512: 4}
    assert {side: _search.pooling_factor(side, side, "auto") for side in expected} == expected


def test_auto_at_224_searches_the_pooled_grid() -> None:
    g = torch.Generator().manual_seed(0)
    auto = functional.sample_translations(224, 224, 0.01, generator=g, search_size="auto")
    g.manual_seed(0)
    pooled = functional.sample_translations(224, 224, 0.01, generator=g, search_size=75)
    assert torch.equal(auto, pooled)
    # K follows the 75 x 75 grid: floor(149^2 * 0.01) = 222 candidates, not floor(447^2 * 0.01) = 1998.
    assert auto.shape == (222, 2)
    inside = auto.abs().max(1).values < 223  # clamped border shifts aside, every shift is on the 3-px grid
    assert bool((auto[inside] % 3 == 0).all())

    x = torch.rand(2, 3, 224, 224, generator=g)
    saliency = torch.rand(2, 224, 224, generator=g)
    perm = torch.tensor([1, 0])
    runs = {
        size: functional.sage_mix(x, saliency, perm=perm, prior=0.4, translations=auto, search_size=size)
        for size in ("auto", 75, None)
    }
    assert torch.equal(runs["auto"].images, runs[75].images)
    assert torch.equal(runs["auto"].translation, runs[75].translation)


def test_the_mixer_at_224_draws_pooled_candidates() -> None:
    mixer = SageMixup(mode="sage", num_classes=10, seed=0, rand_pos=0.01)
    assert mixer.draw_sage_params(2, 224, 224).translations.shape == (222, 2)
    exact = SageMixup(mode="sage", num_classes=10, seed=0, rand_pos=0.01, search_size=None)
    assert exact.draw_sage_params(2, 224, 224).translations.shape == (1998, 2)


@pytest.mark.parametrize(
    ("value", "error"),
    [("x", ValueError), (0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)],
)
def test_bad_search_size_names_the_option(value: object, error: type) -> None:
    with pytest.raises(error, match="search_size"):
        SageConfig(search_size=value)
    with pytest.raises(error, match="search_size"):
        SageMixup(mode="sage", num_classes=10, search_size=value)
    with pytest.raises(error, match="search_size"):
        functional.sample_translations(32, 32, 0.5, search_size=value)


def test_flags_and_yaml_spell_auto_none_and_ints() -> None:
    parser = argparse.ArgumentParser()
    add_option_arguments(parser, ("search_size",), prefix="sage-")
    names = ("search_size",)
    read = {
        text: config_from_args(parser.parse_args(["--sage-search-size", text]), names, prefix="sage_")
        for text in ("auto", "none", "56")
    }
    assert [read[t].search_size for t in ("auto", "none", "56")] == ["auto", None, 56]
    assert config_from_args(parser.parse_args([]), ("search_size",), prefix="sage_").search_size == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--sage-search-size", "big"])
    assert _coerce("sage_search_size", "SearchSize", "none") == "none"
    assert _coerce("sage_search_size", "SearchSize", 56) == 56
    with pytest.raises(ValueError, match="sage_search_size"):
        _coerce("sage_search_size", "SearchSize", "big")
    with pytest.raises(ValueError, match="sage_search_size"):
        SageConfig.from_mapping({"sage_search_size": 0}, prefix="sage_")
