"""timm_sage.transforms.SAGE: the v2 idiom (types, errors, composition) and equality with SageMixup."""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from sage_oracle import oracle_sage
from torch import nn
from torch.utils.data import DataLoader, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2

from timm_sage import functional
from timm_sage.mixup import SageMixup, SageParams
from timm_sage.transforms import SAGE

B, C, H, W, CLASSES = 6, 3, 10, 12, 5


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    s = functional.blur_maps(torch.rand(B, H, W, generator=g) ** 4)
    return x, y, s


def _fixed(transform: SAGE, params: dict) -> SAGE:
    transform.make_params = lambda flat_inputs: dict(params)
    return transform


def _params(seed: int = 1, rand_pos: float = 0.1) -> dict:
    mixer = SageMixup(mode="sage", num_classes=CLASSES, rand_pos=rand_pos, seed=seed)
    perm, prior, translations = mixer.draw_sage_params(B, H, W)[:3]  # (clean is None: r = 1)
    return {"perm": perm, "prior": prior, "translations": translations}


def test_matches_sage_mixup_and_the_oracle():
    x, y, s = _batch()
    params = _params()
    images, labels, saliency_out = _fixed(SAGE(num_classes=CLASSES), params)(x, y, s)
    mixer = SageMixup(mode="sage", num_classes=CLASSES, label_smoothing=0.0, rand_pos=0.1, seed=0)
    mixer.draw_sage_params = lambda *args, **kwargs: SageParams(**params)
    ref_images, ref_labels = mixer(x, y, saliency=s)
    assert torch.equal(images, ref_images)
    assert torch.equal(labels, ref_labels)
    assert saliency_out is s
    oracle_images, oracle_lam, oracle_translation, _ = oracle_sage(
        x, s, params["perm"], params["prior"], params["translations"]
    )
    assert torch.equal(mixer.last.translation, oracle_translation)
    torch.testing.assert_close(images.double(), oracle_images, atol=1e-5, rtol=0)
    expected = oracle_lam[:, None].float() * nn.functional.one_hot(y, CLASSES).float()
    expected = expected + (1 - oracle_lam[:, None].float()) * nn.functional.one_hot(
        y[params["perm"]], CLASSES
    )
    torch.testing.assert_close(labels, expected, atol=1e-6, rtol=0)


def test_bound_model_equals_supplied_saliency():
    x, y, _ = _batch()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, CLASSES)
    )
    params = _params()
    live = _fixed(SAGE(num_classes=CLASSES, model=model), params)(x, y)
    maps = functional.saliency_map(model, x, y)
    given = _fixed(SAGE(num_classes=CLASSES), params)(x, y, maps)
    assert torch.equal(live[0], given[0]) and torch.equal(live[1], given[1])
    assert list(SAGE(num_classes=CLASSES, model=model).parameters()) == []  # the model is not a submodule
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="saliency"):
        SAGE(num_classes=CLASSES)(x, y)


def test_types_preserved_and_inputs_untouched():
    x, y, s = _batch()
    image = tv_tensors.Image(x.clone())
    copies = [t.clone() for t in (x, y, s)]
    out = SAGE(num_classes=CLASSES, seed=0)(image, y, s)
    assert type(out[0]) is tv_tensors.Image and out[0].dtype == x.dtype and out[0].shape == x.shape
    assert out[1].shape == (B, CLASSES) and out[1].dtype == torch.float32
    torch.testing.assert_close(out[1].sum(1), torch.ones(B))
    plain = SAGE(num_classes=CLASSES, seed=0)(x, y, s)
    assert type(plain[0]) is torch.Tensor and torch.equal(plain[0], out[0].as_subclass(torch.Tensor))
    for before, after in zip(copies, (x, y, s), strict=True):
        assert torch.equal(before, after)
    assert torch.equal(image.as_subclass(torch.Tensor), x)


def test_uint8_images_round_the_float_mix():
    x, y, s = _batch()
    x8 = (x * 255).round().to(torch.uint8)
    params = _params()
    mixed8, labels8, _ = _fixed(SAGE(num_classes=CLASSES), params)(x8, y, s)
    mixed, labels, _ = _fixed(SAGE(num_classes=CLASSES), params)(x8.float(), y, s)
    assert mixed8.dtype == torch.uint8
    assert torch.equal(mixed8, mixed.round().to(torch.uint8))
    assert torch.equal(labels8, labels)


def test_soft_labels_and_dict_samples():
    x, y, s = _batch()
    params = _params()
    soft = nn.functional.one_hot(y, CLASSES).double() * 0.9 + 0.02
    out = _fixed(SAGE(), params)({"saliency": s, "image": x, "labels": soft})  # saliency first: not the image
    images, _, _ = _fixed(SAGE(num_classes=CLASSES), params)(x, y, s)
    assert torch.equal(out["image"], images) and out["saliency"] is s
    lam = functional.sage_mix(x, s, **params).lam.double()[:, None]
    assert out["labels"].dtype == torch.float64
    torch.testing.assert_close(
        out["labels"], lam * soft + (1 - lam) * soft[params["perm"]], atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "sample",
    [
        lambda x, y: (PIL.Image.new("RGB", (W, H)), y),
        lambda x, y: {
            "image": x,
            "boxes": tv_tensors.BoundingBoxes(torch.zeros(1, 4), format="XYXY", canvas_size=(H, W)),
            "labels": y,
        },
        lambda x, y: {"image": x, "mask": tv_tensors.Mask(torch.zeros(H, W)), "labels": y},
        lambda x, y: (x, y[:, None, None]),
        lambda x, y: (x, nn.functional.one_hot(y, CLASSES + 1).float()),
        lambda x, y: (x, [0] * B),
    ],
)
def test_errors_match_v2(sample):
    x, y, _ = _batch()
    with pytest.raises(ValueError) as ours:
        SAGE(num_classes=CLASSES)(sample(x, y))
    with pytest.raises(ValueError) as theirs:
        v2.MixUp(num_classes=CLASSES)(sample(x, y))
    assert str(ours.value) == str(theirs.value).replace("MixUp", "SAGE")


def test_index_labels_need_num_classes_and_batch_sizes_must_agree():
    x, y, s = _batch()
    for transform in (SAGE(), v2.CutMix()):
        with pytest.raises(ValueError, match="num_classes must be passed"):
            transform(x, y)
    with pytest.raises(ValueError, match="batch size of the image"):
        SAGE(num_classes=CLASSES)(x[:-1], y, s)
    with pytest.raises(ValueError, match="saliency must have shape"):
        SAGE(num_classes=CLASSES)(x, y, s[:, :-1])
    with pytest.raises(ValueError, match="seed or generator"):
        SAGE(seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="rand_pos"):
        SAGE(rand_pos=0.0)


def test_seeded_draws_repeat():
    x, y, s = _batch()
    first = SAGE(num_classes=CLASSES, seed=3)(x, y, s)
    second = SAGE(num_classes=CLASSES, seed=3)(x, y, s)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    params = SAGE(seed=3).make_params([x])
    assert sorted(params["perm"].tolist()) == list(range(B)) and 0 <= params["prior"] <= 0.6
    assert params["translations"].shape == (int((2 * H - 1) * (2 * W - 1) * 0.01), 2)


def test_random_choice_with_cutmix():
    x, y, s = _batch()
    choice = v2.RandomChoice([SAGE(num_classes=CLASSES, seed=0), v2.CutMix(num_classes=CLASSES)])
    torch.manual_seed(0)
    kinds = set()
    for _ in range(12):
        images, labels, saliency = choice(tv_tensors.Image(x), y, s)
        assert type(images) is tv_tensors.Image and labels.shape == (B, CLASSES) and saliency is s
        torch.testing.assert_close(labels.sum(1), torch.ones(B))
        # CutMix copies pixels from the rolled batch; SAGE blends them.
        plain = images.as_subclass(torch.Tensor)
        copied = bool(((plain == x) | (plain == x.roll(1, 0))).all())
        kinds.add("cutmix" if copied else "sage")
    assert kinds == {"sage", "cutmix"}


class _Samples(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, C, H, W, generator=g)
        self.y = torch.randint(0, CLASSES, (n,), generator=g)
        self.s = torch.rand(n, H, W, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), self.s[i]


def test_inside_collate_fn_with_workers():
    sage = SAGE(num_classes=CLASSES, seed=0)

    def collate(samples):
        return sage(*default_collate(samples))

    loader = DataLoader(_Samples(), batch_size=6, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 4
    for images, labels, saliency in batches:
        assert images.shape == (6, C, H, W) and labels.shape == (6, CLASSES) and saliency.shape == (6, H, W)
        torch.testing.assert_close(labels.sum(1), torch.ones(6))
    # After the DataLoader: the same transform on collated batches.
    images, labels, _ = sage(*next(iter(DataLoader(_Samples(), batch_size=6))))
    assert images.shape == (6, C, H, W) and labels.shape == (6, CLASSES)


def test_workers_draw_differently():
    sage = SAGE(seed=0)

    def collate(samples):
        x = default_collate([s[0] for s in samples])
        return sage.make_params([x])["translations"]

    first, second = list(DataLoader(_Samples(), batch_size=12, num_workers=2, collate_fn=collate))
    assert not torch.equal(first, second)


def _example(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "docs" / "examples"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"example_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not __import__("os").path.isdir("/usr/share/datasets/fashion-mnist"), reason="no Fashion-MNIST"
)
def test_torchvision_example_runs(capsys):
    accuracy = _example("torchvision_sage").main(
        ["--steps", "3", "--train-limit", "256", "--test-limit", "100", "--cutmix"]
    )
    assert 0.0 <= accuracy <= 1.0 and "step     3" in capsys.readouterr().out
