"""Same seed, same bits: SAGE's mixes and targets do not depend on the run, the loader's worker count,
the search's chunking, the rest of the batch, or on torch's deterministic-algorithms mode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from timm_sage import SageMixup, functional

NUM_CLASSES = 5


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, NUM_CLASSES),
    )


def _batch(seed: int, batch: int = 8, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(
        0, NUM_CLASSES, (batch,), generator=gen
    )


def _mixer_run(seed: int, steps: int = 3, update_ratio: float = 1.0) -> list[tuple[torch.Tensor, ...]]:
    """A fresh model and SageMixup(seed): per step the mixed images, targets, translations and the grads of
    the weighted loss (with update_ratio < 1 the clean term's too)."""
    model = _net()
    mixer = SageMixup(
        mode="sage",
        model=model,
        num_classes=NUM_CLASSES,
        seed=seed,
        rand_pos=0.1,
        cutmix_alpha=1.0,
        switch_prob=0.3,
        update_ratio=update_ratio,
    )
    out = []
    for step in range(steps):
        model.zero_grad(set_to_none=True)
        x, y = _batch(step)
        images, target = mixer(x, y)
        loss = torch.sum(-target * torch.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        out.append((images, target, mixer.last.perm, mixer.last.lam, *grads))
    return out


def _assert_runs_equal(first: list[tuple[torch.Tensor, ...]], second: list[tuple[torch.Tensor, ...]]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert len(a) == len(b)
        for ta, tb in zip(a, b, strict=True):
            assert ta.dtype == tb.dtype and torch.equal(ta, tb)


@pytest.mark.parametrize("update_ratio", [1.0, 0.6])
def test_sage_mixup_same_seed_bit_identical(update_ratio: float) -> None:
    first = _mixer_run(7, steps=4, update_ratio=update_ratio)
    _assert_runs_equal(first, _mixer_run(7, steps=4, update_ratio=update_ratio))
    other = _mixer_run(8, steps=4, update_ratio=update_ratio)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True)), "seed had no effect"


def test_functional_same_generator_seed_bit_identical() -> None:
    def run(seed: int):
        gen = torch.Generator().manual_seed(seed)
        x, y = _batch(3)
        saliency = functional.saliency_map(_net(), x, y)
        perm = torch.randperm(8, generator=gen)
        translations = functional.sample_translations(12, 12, 0.05, generator=gen)
        out = functional.sage_mix(x, saliency, perm=perm, prior=0.55, translations=translations)
        target = functional.sage_target(
            y, perm=perm, lam=out.lam, num_classes=NUM_CLASSES, label_smoothing=0.1
        )
        return out.images, out.lam, out.translation, target, saliency

    for a, b in zip(run(21), run(21), strict=True):
        assert torch.equal(a, b)


class _IndexedImages(Dataset):
    """Deterministic dataset: image i is drawn from a generator seeded with i; label i % NUM_CLASSES."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        gen = torch.Generator().manual_seed(1000 + index)
        return torch.randn(3, 10, 10, generator=gen), index % NUM_CLASSES


def _loader_run(num_workers: int) -> list[tuple[torch.Tensor, ...]]:
    """Mix every batch of a shuffled loader in the main process (as timm and our trainer do)."""
    loader = DataLoader(
        _IndexedImages(),
        batch_size=8,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(5),
    )
    model = _net()
    mixer = SageMixup(mode="sage", model=model, num_classes=NUM_CLASSES, seed=9, rand_pos=0.1)
    out = []
    for x, y in loader:
        images, target = mixer(x, y)
        out.append((x, y, images, target, mixer.last.translation))
    return out


def test_mix_does_not_depend_on_dataloader_workers() -> None:
    runs = [_loader_run(workers) for workers in (0, 1, 2)]
    assert len(runs[0]) == 3
    _assert_runs_equal(runs[0], runs[1])
    _assert_runs_equal(runs[0], runs[2])


def _mix_inputs(batch: int = 10, size: int = 11, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    saliency = functional.blur_maps(torch.rand(batch, size, size, generator=gen) ** 4)
    perm = torch.randperm(batch, generator=gen)
    prior = torch.rand(batch, generator=gen) * 0.7
    translations = functional.sample_translations(size, size, 0.1, generator=gen)
    return x, saliency, perm, prior, translations


@pytest.mark.parametrize("search_size", [None, 4])
def test_chunk_elements_does_not_change_results(search_size: int | None) -> None:
    x, saliency, perm, prior, translations = _mix_inputs()
    outs = [
        functional.sage_mix(
            x,
            saliency,
            perm=perm,
            prior=prior,
            translations=translations,
            search_size=search_size,
            chunk_elements=chunk,
        )
        for chunk in (1, 7 * 11 * 11, None, 1 << 40)
    ]
    for out in outs[1:]:
        assert torch.equal(out.translation, outs[0].translation)
        assert torch.equal(out.lam, outs[0].lam)
        assert torch.equal(out.images, outs[0].images)


def test_each_image_is_independent_of_the_rest_of_the_batch() -> None:
    """With its partner fixed, image b's mix is the same in the full batch and in a 2-image batch
    made of (anchor, partner), with a per-image prior."""
    x, saliency, perm, prior, translations = _mix_inputs()
    full = functional.sage_mix(x, saliency, perm=perm, prior=prior, translations=translations)
    for b in range(x.shape[0]):
        p = int(perm[b])
        pair = [b, p] if p != b else [b]
        sub_perm = torch.tensor([1, 0]) if p != b else torch.tensor([0])
        sub = functional.sage_mix(
            x[pair], saliency[pair], perm=sub_perm, prior=prior[pair], translations=translations
        )
        assert torch.equal(sub.translation[0], full.translation[b])
        assert torch.equal(sub.lam[0], full.lam[b])
        assert torch.equal(sub.images[0], full.images[b])


def test_batch_in_chunks_closed_under_perm_equals_whole_batch() -> None:
    """A perm made of disjoint cycles lets the batch be mixed chunk by chunk (each chunk a union of
    cycles, perm re-indexed): concatenated chunk results equal the whole-batch call bit for bit."""
    x, saliency, _, prior, translations = _mix_inputs(batch=12, seed=3)
    chunks = [[0, 5, 9], [1, 2], [3, 4, 6, 7, 8], [10, 11]]
    perm = torch.empty(12, dtype=torch.long)
    for chunk in chunks:  # each chunk is one cycle: a -> b -> c -> a
        for i, index in enumerate(chunk):
            perm[index] = chunk[(i + 1) % len(chunk)]
    full = functional.sage_mix(x, saliency, perm=perm, prior=prior, translations=translations)
    for chunk in chunks:
        position = {index: i for i, index in enumerate(chunk)}
        sub_perm = torch.tensor([position[int(perm[index])] for index in chunk])
        sub = functional.sage_mix(
            x[chunk], saliency[chunk], perm=sub_perm, prior=prior[chunk], translations=translations
        )
        assert torch.equal(sub.translation, full.translation[chunk])
        assert torch.equal(sub.lam, full.lam[chunk])
        assert torch.equal(sub.images, full.images[chunk])


@pytest.fixture
def deterministic_algorithms() -> Iterator[None]:
    previous, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


@pytest.mark.parametrize("update_ratio", [1.0, 0.5])
def test_deterministic_algorithms_mode_does_not_break_sage(
    deterministic_algorithms: None, update_ratio: float
) -> None:
    model = _net()
    mixer = SageMixup(
        mode="sage",
        model=model,
        num_classes=NUM_CLASSES,
        seed=4,
        rand_pos=0.1,
        update_ratio=update_ratio,
        search_size=6,
    )
    x, y = _batch(0)
    images, target = mixer(x, y)
    loss = torch.sum(-target * F.log_softmax(model(images), -1), -1).mean()
    loss.backward()
    assert mixer.last.method == "sage"
    assert torch.isfinite(images).all() and all(torch.isfinite(p.grad).all() for p in model.parameters())
    # And the deterministic mode gives the same bits as the default mode for the same seed.
    torch.use_deterministic_algorithms(False)
    again = SageMixup(
        mode="sage",
        model=_net(),
        num_classes=NUM_CLASSES,
        seed=4,
        rand_pos=0.1,
        update_ratio=update_ratio,
        search_size=6,
    )
    images_default, target_default = again(x, y)
    assert torch.equal(images, images_default) and torch.equal(target, target_default)
