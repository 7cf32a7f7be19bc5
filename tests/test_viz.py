"""``timm-sage show``: real figures from Fashion-MNIST, their sizes, and the data behind them."""

from __future__ import annotations

import copy
import json
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sage_oracle import oracle_sage

from timm_sage import functional
from timm_sage.data.idx import FASHION_MNIST_ROOT as DEFAULT_ROOT
from timm_sage.data.idx import read_idx
from timm_sage.tools import cli
from timm_sage.tools import show as viz
from timm_sage.tools.show_data import load_display_batch

needs_fmnist = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST is not installed")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def assert_valid_png(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    assert png_size(path) == size
    with Image.open(path) as image:
        image.verify()  # checks the chunks' CRCs
    with Image.open(path) as image:
        image.load()
        assert image.size == size
        assert np.asarray(image).std() > 0  # not a blank canvas


@pytest.fixture(scope="module")
def fmnist_saliency():
    """A display batch of Fashion-MNIST and the saliency of a freshly initialised resnet10t."""
    batch = load_display_batch(None, pairs=3, batch_size=16, seed=5)
    model = viz.build_model(None, 1, 10, seed=5)
    model.train()
    return batch, functional.saliency_map(model, batch.images, batch.labels)


@needs_fmnist
def test_show_on_fashion_mnist_writes_both_pngs(tmp_path):
    out = tmp_path / "figures"
    threads = torch.get_num_threads()
    code = cli.main(["show", "-o", str(out), "--pairs", "2", "--warmup-steps", "2", "--seed", "1"])
    assert code == 0
    assert torch.get_num_threads() == threads  # show runs single-threaded and restores the setting
    assert_valid_png(out / "comparison.png", viz.grid_size_px(2))
    assert_valid_png(out / "anatomy.png", viz.ANATOMY_SIZE_PX)
    assert viz.grid_size_px(2) == (800, 360)
    # no temporary left; show.json records what drew the figures (tests/test_figures.py)
    assert sorted(p.name for p in out.iterdir()) == ["anatomy.png", "comparison.png", "show.json"]
    record = json.loads((out / "show.json").read_text())
    assert record["command"] == f"timm-sage show -o {out} --pairs 2 --seed 1 --warmup-steps 2"
    assert record["arguments"]["pairs"] == 2 and set(record["figures"]) == {"anatomy.png", "comparison.png"}


@needs_fmnist
def test_marked_translation_is_sage_mix_choice(fmnist_saliency):
    batch, saliency = fmnist_saliency
    data = viz.anatomy_data(batch, saliency, pairs=3, seed=2, upper_lambda=0.6)
    height, width = batch.images.shape[-2:]
    assert data.scores.shape == (2 * height - 1, 2 * width - 1)
    assert data.marked == data.chosen
    # Independently: sage_mix over every candidate, drawn by sample_translations with rand_pos=1.0.
    generator = torch.Generator().manual_seed(0)
    candidates = functional.sample_translations(height, width, 1.0, generator=generator)
    assert candidates.shape[0] == (2 * height - 1) * (2 * width - 1)
    every = viz.all_translations(height, width)
    assert {tuple(t) for t in candidates.tolist()} == {tuple(t) for t in every.tolist()}
    perm = viz.pair_permutation(batch.images.shape[0], 3)
    out = functional.sage_mix(batch.images, saliency, perm=perm, prior=data.prior, translations=candidates)
    assert tuple(out.translation[0].tolist()) == data.marked
    assert data.lam == pytest.approx(float(out.lam[0]), abs=1e-6)
    assert data.mask.mean().item() == pytest.approx(data.lam, abs=1e-6)
    # The grid cell [dy + H-1, dx + W-1] holds v(dy, dx): compare a few cells with the slow oracle.
    probes = torch.tensor([list(data.marked), [0, 0], [-5, 9], [13, -20]])
    pair = torch.tensor([0, 3])
    oracle = oracle_sage(batch.images[pair], saliency[pair], torch.tensor([1, 0]), data.prior, probes)
    oracle_scores = oracle[3][0]
    grid_values = torch.stack([data.scores[dy + height - 1, dx + width - 1] for dy, dx in probes.tolist()])
    torch.testing.assert_close(grid_values.double(), oracle_scores, atol=1e-6, rtol=1e-5)
    assert float(data.scores.max()) == pytest.approx(float(grid_values[0]))


@needs_fmnist
def test_comparison_data_labels_and_mixes(fmnist_saliency):
    batch, saliency = fmnist_saliency
    data = viz.comparison_data(batch, saliency, 3, seed=4, upper_lambda=0.5, rand_pos=0.05)
    a, b = data.images["A"], data.images["B"]
    assert a.shape == (3, 1, 28, 28) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    labels_a, labels_b = batch.labels[:3], batch.labels[3:6]
    assert bool((labels_a != labels_b).all())  # partners of another class where the data allows
    for key in viz.COLUMNS:
        torch.testing.assert_close(data.labels[key].sum(1), torch.ones(3))
    lam_mixup = data.labels["Mixup"][torch.arange(3), labels_a]
    lam_view = lam_mixup.view(-1, 1, 1, 1)
    torch.testing.assert_close(data.images["Mixup"], lam_view * a + (1 - lam_view) * b, atol=1e-5, rtol=0)
    # CutMix: every pixel is A's or B's, and B's share of the frame is at most 1 - lam.
    cut = data.images["CutMix"]
    assert bool(((cut == a) | (cut == b)).all())
    lam_cut = data.labels["CutMix"][torch.arange(3), labels_a]
    assert bool(((cut != a).float().mean((1, 2, 3)) <= 1 - lam_cut + 1e-6).all())
    # SAGE: the soft label is the mask's mean, recomputed from the chosen translation.
    lam_sage = data.labels["SAGE"][torch.arange(3), labels_a]
    perm = viz.pair_permutation(batch.images.shape[0], 3)
    prior = torch.full((batch.images.shape[0],), 0.5)
    prior[:3] = torch.from_numpy(viz._pair_draws(4, 3, 0.5)["prior"]).float()
    assert bool((prior[:3] <= 0.5).all())
    translation = torch.zeros(batch.images.shape[0], 2, dtype=torch.long)
    translation[:3] = data.translation
    mask = functional.mixing_mask(saliency, perm=perm, prior=prior, translation=translation)[:3]
    torch.testing.assert_close(lam_sage, mask.mean((1, 2)), atol=1e-6, rtol=0)


def test_library_does_not_import_matplotlib():
    code = (
        "import sys, timm_sage, timm_sage.tools.show, timm_sage.functional, timm_sage.mixup\n"
        "assert 'matplotlib' not in sys.modules, 'importing timm_sage pulled in matplotlib'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_parser_does_not_import_matplotlib():
    code = (
        "import sys, timm_sage.tools.cli\n"
        "timm_sage.tools.cli.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')\n"
        "assert not bad, f'building the timm-sage parser imported {bad[:3]}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = viz.build_model("resnet10t", 1, 10, seed=7)
    path = tmp_path / "last.pth.tar"
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}  # as saved from DDP
    torch.save({"state_dict": wrapped, "arch": "resnet10t", "epoch": 3}, path)
    loaded = viz.build_model(None, 1, 10, checkpoint=path, seed=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    # A timm-sage train checkpoint: weights under "model", the name under "arch", numpy/python RNG state.
    session = tmp_path / "session.pth.tar"
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    state = {
        "epoch": 1,
        "arch": "resnet10t",
        "args": {"model": "resnet10t", "lr": 0.1},
        "model": model.state_dict(),
        "optimizer": None,
        "rng": rng,
    }
    torch.save(state, session)
    from_session = viz.build_model(None, 1, 10, checkpoint=session)
    assert torch.equal(from_session.fc.weight, model.fc.weight)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert torch.equal(viz.build_model("resnet10t", 1, 10, bare).conv1[0].weight, model.conv1[0].weight)
    with pytest.raises(ValueError, match="does not fit model"):
        viz.build_model(None, 1, 7, checkpoint=path)
    with pytest.raises(FileNotFoundError):
        viz.build_model(None, 1, 10, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not a timm model"):
        viz.build_model("no_such_model_xyz", 1, 10)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pairs": 0}, "pairs"),
        ({"pairs": 17}, "pairs"),
        ({"upper_lambda": 1.5}, "upper_lambda"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"rand_pos": 0.0}, "rand_pos"),
        ({"ema_decay": 1.5}, "ema_decay"),
    ],
)
def test_show_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        viz.show(tmp_path, **kwargs)


def test_cli_reports_bad_data_folder(tmp_path, capsys):
    assert cli.main(["show", "-o", str(tmp_path), "--data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_show_on_cifar_and_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in ("test_batch", "data_batch_1"):
        with open(cifar / name, "wb") as handle:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (40, 3072), dtype=np.uint8),
                    b"labels": list(rng.integers(0, 10, 40)),
                },
                handle,
            )
    with open(cifar / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, handle)
    paths = viz.show(tmp_path / "out_cifar", data=cifar, pairs=1, warmup_steps=1)
    assert_valid_png(paths["comparison"], viz.grid_size_px(1))
    assert_valid_png(paths["anatomy"], viz.ANATOMY_SIZE_PX)

    folder = tmp_path / "folder"
    for label in ("cat", "dog", "fox"):
        (folder / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    paths = viz.show(tmp_path / "out_folder", data=folder, pairs=2, warmup_steps=0, image_size=24)
    assert_valid_png(paths["comparison"], viz.grid_size_px(2))


def test_idx_reader_matches_a_hand_written_file(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "tiny-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB3I", 0, 8, 3, 2, 3, 4) + images.tobytes())
    np.testing.assert_array_equal(read_idx(path), images)
    np.testing.assert_array_equal(read_idx(path, limit=1), images[:1])
    path.write_bytes(struct.pack(">HBB3I", 0, 8, 3, 2, 3, 4) + images.tobytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


@needs_fmnist
def test_sources_data_are_each_sources_maps_of_the_live_and_ema_models():
    from timm.utils import ModelEmaV3

    from timm_sage import SageConfig
    from timm_sage.core.feature_saliency import feature_saliency, read_head
    from timm_sage.tools.show_data import load_images, warm_up

    batch = load_display_batch(None, pairs=2, batch_size=16, seed=3)
    model = viz.build_model("preactresnet18_tiny", 1, 10, seed=3)  # a 4x4 last feature map at 28 x 28
    ema = ModelEmaV3(model, decay=0.5)
    warm_up(model, load_images(None, "train", 128, 4), 3, 3, ema=ema)
    model.train()
    data = viz.sources_data(batch, model, ema.module, 4, SageConfig())
    assert data.images.shape == (4, 1, 28, 28) and len(data.labels) == 4
    assert set(data.maps) == {(m, s) for m in ("live", "ema") for s in viz.SOURCE_COLUMNS}
    for maps in data.maps.values():
        assert maps.shape == (4, 28, 28) and bool((maps >= 0).all()) and float(maps.std()) > 0
    x, y = batch.images, batch.labels
    torch.testing.assert_close(data.maps[("live", "gradient")], functional.saliency_map(model, x, y)[:4])
    head = read_head(ema.module, "cam")
    cam = feature_saliency(head, x, y, source="cam", loss="bce_softmax", blur_kernel=5, blur_sigma=1.0)
    cam = cam.saliency
    torch.testing.assert_close(data.maps[("ema", "cam")], cam[:4])
    # three warm-up steps with decay 0.5 leave the EMA behind the live model: other maps
    assert not torch.allclose(data.maps[("ema", "cam")], data.maps[("live", "cam")])

    # timm's resnet10t (output stride 32) has a 1x1 map at 28 x 28: no cam or features map, said so
    stride32 = viz.build_model(None, 1, 10, seed=3).train()
    data = viz.sources_data(batch, stride32, copy.deepcopy(stride32).eval(), 2, SageConfig())
    assert set(data.maps) == {("live", "gradient"), ("ema", "gradient")}
    assert set(data.missing) == {(m, s) for m in ("live", "ema") for s in ("cam", "features")}
    assert all("1x1" in reason for reason in data.missing.values())
