"""timm_sage.albumentations.SageMix: equality with the v2 transform and SageMixup, serialisation, seeding,
shape checks, and a 2-worker DataLoader epoch on Fashion-MNIST fed by the saliency cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

# The whole module needs albumentations (an extra): skipped, not a collection error, where it is absent
# (a GPU box's own environment under .ci/gpu_check.sh collects every test file).
A = pytest.importorskip("albumentations")

from timm_sage import functional  # noqa: E402
from timm_sage.albumentations import SageMix, SageMixDataset  # noqa: E402
from timm_sage.data.cache import SaliencyCache, build_cache  # noqa: E402
from timm_sage.data.idx import load_idx_split, open_dataset  # noqa: E402
from timm_sage.mixup import SageMixup, SageParams  # noqa: E402
from timm_sage.transforms import SAGE  # noqa: E402

B, C, H, W, CLASSES = 5, 3, 9, 11, 7
FMNIST = "/usr/share/datasets/fashion-mnist"


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    s = functional.blur_maps(torch.rand(B, H, W, generator=g) ** 4, kernel_size=3)
    return x, y, s


def _params() -> dict:
    perm, prior, translations = SageMixup(
        mode="sage", num_classes=CLASSES, rand_pos=0.2, seed=4
    ).draw_sage_params(B, H, W)[:3]
    return {"perm": perm, "prior": prior, "translations": translations}


def _sage_mix(params: dict, **kwargs) -> SageMix:
    transform = SageMix(num_classes=CLASSES, **kwargs)
    transform.draw_sage_params = lambda height, width: {
        "prior": params["prior"],
        "translations": params["translations"],
    }
    return transform


def _metadata(x, y, s, perm, b):
    partner = int(perm[b])
    return {
        "image": x[partner].permute(1, 2, 0).numpy(),
        "label": int(y[partner]),
        "saliency": s[partner].numpy(),
        "anchor_saliency": s[b].numpy(),
    }


def test_same_mix_as_v2_and_sage_mixup():
    x, y, s = _batch()
    params = _params()
    sage = SAGE(num_classes=CLASSES)
    sage.make_params = lambda flat_inputs: dict(params)
    images, labels, _ = sage(x, y, s)
    mixer = SageMixup(mode="sage", num_classes=CLASSES, label_smoothing=0.0, rand_pos=0.2, seed=0)
    mixer.draw_sage_params = lambda *args, **kwargs: SageParams(**params)
    ref_images, ref_labels = mixer(x, y, saliency=s)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    transform = _sage_mix(params)
    for b in range(B):
        out = transform(
            image=x[b].permute(1, 2, 0).numpy(),
            label=int(y[b]),
            sage_metadata=_metadata(x, y, s, params["perm"], b),
        )
        assert transform.params["translation"] == tuple(mixer.last.translation[b].tolist())
        np.testing.assert_allclose(out["image"], images[b].permute(1, 2, 0).numpy(), atol=1e-6, rtol=0)
        assert out["image"].dtype == np.float32 and out["image"].shape == (H, W, C)
        np.testing.assert_allclose(out["label"], labels[b].numpy(), atol=1e-6, rtol=0)


def test_uint8_and_grayscale_images():
    x, y, s = _batch()
    params = _params()
    gray8 = (x[:, :1] * 255).round().to(torch.uint8)
    sage = SAGE(num_classes=CLASSES)
    sage.make_params = lambda flat_inputs: dict(params)
    images, labels, _ = sage(gray8, y, s)
    transform = _sage_mix(params)
    for b in range(B):
        meta = _metadata(gray8, y, s, params["perm"], b)
        meta["image"] = meta["image"][..., 0]
        out = transform(image=gray8[b, 0].numpy(), label=int(y[b]), sage_metadata=meta)
        assert out["image"].dtype == np.uint8 and out["image"].shape == (H, W)
        np.testing.assert_array_equal(out["image"], images[b, 0].numpy())
        np.testing.assert_allclose(out["label"], labels[b].numpy(), atol=1e-6)


def _sample(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((H, W, C), dtype=np.float32),
        "label": 2,
        "sage_metadata": {
            "image": rng.random((H, W, C), dtype=np.float32),
            "label": 5,
            "saliency": rng.random((H, W)),
            "anchor_saliency": rng.random((H, W)),
        },
    }


def test_to_dict_from_dict_roundtrip():
    pipeline = A.Compose(
        [SageMix(num_classes=CLASSES, alpha=0.5, upper_lambda=0.7, rand_pos=0.3, search_size=4, p=0.9)]
    )
    serialised = json.loads(json.dumps(A.to_dict(pipeline)))
    entry = serialised["transform"]["transforms"][0]
    assert entry["__class_fullname__"] == "timm_sage.albumentations.SageMix"
    assert {
        k: entry[k] for k in ("num_classes", "alpha", "upper_lambda", "rand_pos", "search_size", "p")
    } == {
        "num_classes": CLASSES,
        "alpha": 0.5,
        "upper_lambda": 0.7,
        "rand_pos": 0.3,
        "search_size": 4,
        "p": 0.9,
    }
    restored = A.from_dict(serialised)
    assert A.to_dict(restored) == A.to_dict(pipeline)
    first, second = A.Compose(pipeline.transforms, seed=1), A.Compose(restored.transforms, seed=1)
    for seed in range(4):
        a, b = first(**_sample(seed)), second(**_sample(seed))
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_compose_seed_drives_the_draws():
    def run(seed):
        pipeline = A.Compose([SageMix(num_classes=CLASSES, rand_pos=0.05)], seed=seed)
        outs = [pipeline(**_sample(i)) for i in range(5)]
        return np.stack([o["image"] for o in outs]), np.stack([o["label"] for o in outs])

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.allclose(a[1].sum(1), 1.0) and a[1].dtype == np.float32


def test_skipped_transform_still_gives_a_soft_label():
    sample = _sample()
    out = A.Compose([SageMix(num_classes=CLASSES, p=0.0)], seed=0)(**sample)
    np.testing.assert_array_equal(out["image"], sample["image"])
    np.testing.assert_array_equal(out["label"], np.eye(CLASSES, dtype=np.float32)[2])


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            lambda d: d["sage_metadata"].update(image=np.zeros((H, W + 1, C), np.float32)),
            ValueError,
            r"\['image'\] must match",
        ),
        (
            lambda d: d["sage_metadata"].update(image=np.zeros((H, W, C), np.uint8)),
            ValueError,
            r"\['image'\] must match",
        ),
        (
            lambda d: d["sage_metadata"].update(saliency=np.ones((H - 1, W))),
            ValueError,
            r"\['saliency'\] must have shape",
        ),
        (lambda d: d["sage_metadata"].update(anchor_saliency=np.ones((W, H))), ValueError, "anchor_saliency"),
        (lambda d: d["sage_metadata"].update(saliency=-np.ones((H, W))), ValueError, "non-negative"),
        (lambda d: d["sage_metadata"].pop("label"), ValueError, "keys image, label"),
        (lambda d: d.update(label=CLASSES), ValueError, "label must lie in"),
        (lambda d: d.update(image=d["image"].astype(np.float64)), TypeError, "uint8 or float32"),
    ],
)
def test_rejects_mismatched_inputs(change, error, match):
    sample = _sample()
    change(sample)
    with pytest.raises(error, match=match):
        A.Compose([SageMix(num_classes=CLASSES)], seed=0)(**sample)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rand_pos"):
        SageMix(num_classes=CLASSES, rand_pos=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        SageMix(num_classes=0)


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST idx files not installed")
def test_dataloader_epoch_with_cache_and_two_workers(tmp_path):
    count = 256
    dataset = open_dataset("fashion-mnist")[0]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    path = build_cache(
        model, dataset, tmp_path / "fmnist.safetensors", indices=range(count), size=14, progress=False
    )
    images, labels = load_idx_split(FMNIST, "train")
    pipeline = A.Compose([A.HorizontalFlip(p=0.0), SageMix(num_classes=10, rand_pos=0.02)], seed=0)
    to_tensor = lambda image: torch.from_numpy(image).float().div(255)[None]  # noqa: E731
    paired = SageMixDataset(
        images[:count], labels[:count], SaliencyCache(path), pipeline, to_tensor=to_tensor
    )
    loader = DataLoader(
        paired, batch_size=64, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    seen = 0
    for batch_images, batch_labels in loader:
        assert batch_images.shape[1:] == (1, 28, 28) and batch_labels.shape[1:] == (10,)
        torch.testing.assert_close(batch_labels.sum(1), torch.ones(len(batch_labels)))
        seen += len(batch_images)
    assert seen == count
    # Mixed labels really mix: most rows put weight on two classes.
    assert float((batch_labels > 0).sum(1).float().mean()) > 1.5


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST idx files not installed")
def test_albumentations_example_runs(tmp_path, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "docs" / "examples"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(
        "example_albumentations_sage", folder / "albumentations_sage.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = tmp_path / "fmnist.safetensors"
    args = ["--steps", "3", "--teacher-steps", "2", "--train-limit", "256", "--test-limit", "100"]
    accuracy = module.main([*args, "--workers", "0", "--cache", str(cache)])
    assert 0.0 <= accuracy <= 1.0 and cache.exists() and "step     3" in capsys.readouterr().out
    assert len(SaliencyCache(cache)) == 256
