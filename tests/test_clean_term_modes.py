"""The clean term (update_ratio < 1) with mixes other than SAGE's: timm's Mixup, CutMix and switch modes.

The loss trained is ``(1 - r) * l_clean + r * l_mixed`` whatever the mix: ``clean_term="separate_pass"``
runs SAGE's clean pass and carries its gradients in ``loss_weight``; ``"in_batch"`` leaves
``round((1 - r) * B)`` images unmixed with their own labels.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timm_sage import SageMixup
from timm_sage.core.clean import LossWeight


class TinyNet(nn.Module):
    """No BatchNorm: the clean and the mixed forward do not touch each other's statistics."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def _batch(seed: int = 0, batch: int = 8, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, classes, (batch,), generator=g)


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return torch.sum(-soft * F.log_softmax(logits, -1), -1).mean()


MODES = [
    pytest.param({"mode": "batch", "mixup_alpha": 1.0}, id="mixup"),
    pytest.param({"mode": "batch", "mixup_alpha": 0.0, "cutmix_alpha": 1.0}, id="cutmix"),
    pytest.param({"mode": "batch", "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5}, id="switch"),
    pytest.param(
        {"mode": "sage", "mixup_alpha": 1.0, "cutmix_alpha": 1.0, "switch_prob": 1.0}, id="sage-cutmix"
    ),
]


@pytest.mark.parametrize("mode_args", MODES)
def test_separate_pass_trains_the_weighted_sum_of_clean_and_mixed_losses(mode_args):
    torch.manual_seed(0)
    np.random.seed(0)  # timm's modes draw lam from numpy's global generator
    model = TinyNet()
    reference = copy.deepcopy(model)
    x, y = _batch()
    clean_x = x.clone()  # timm's modes mix x in place
    mixer = SageMixup(
        **mode_args, num_classes=5, label_smoothing=0.0, model=model, update_ratio=0.7,
        saliency_loss="cross_entropy", seed=1,
    )  # fmt: skip
    mixed, soft = mixer(x, y)
    assert isinstance(mixer.loss_weight, LossWeight)
    assert float(mixer.loss_weight) == pytest.approx(0.7)
    (_soft_ce(model(mixed), soft) * mixer.loss_weight).backward()

    # By hand: 0.3 * d CE(clean) + 0.7 * d CE(mixed, soft) on a copy of the same weights.
    expected = 0.3 * F.cross_entropy(reference(clean_x), y) + 0.7 * _soft_ce(reference(mixed), soft)
    expected.backward()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode_args", MODES)
def test_in_batch_leaves_the_clean_share_unmixed_with_its_own_labels(mode_args):
    np.random.seed(0)
    x, y = _batch(batch=10)
    original = x.clone()
    mixer = SageMixup(
        **mode_args, num_classes=5, label_smoothing=0.1, model=TinyNet(), update_ratio=0.7,
        clean_term="in_batch", seed=3,
    )  # fmt: skip
    mixed, soft = mixer(x, y)
    assert mixer.loss_weight == 1.0  # the clean term is in the batch, not in the weight
    same = (mixed == original).flatten(1).all(1)
    own = torch.full((10, 5), 0.1 / 5)
    own[torch.arange(10), y] = 1 - 0.1 + 0.1 / 5
    kept = same & torch.isclose(soft, own).all(1)
    # round(0.3 * 10) = 3 images come back as they were, with their own smoothed labels; the mixed
    # ones differ (a CutMix box or a Mixup blend changes every image of a random batch)
    assert int(kept.sum()) >= 3
    assert int((~same).sum()) >= 5


def test_update_ratio_one_is_timms_mixup_untouched():
    x, y = _batch()
    np.random.seed(5)
    ours, ours_soft = SageMixup(mode="batch", mixup_alpha=1.0, num_classes=5, model=TinyNet())(x.clone(), y)
    from timm.data import Mixup

    np.random.seed(5)
    theirs, theirs_soft = Mixup(mode="batch", mixup_alpha=1.0, num_classes=5)(x.clone(), y)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_soft, theirs_soft)


def test_separate_pass_without_a_model_names_the_fix():
    x, y = _batch()
    mixer = SageMixup(mode="batch", mixup_alpha=1.0, num_classes=5, update_ratio=0.7)
    with pytest.raises(ValueError, match="update_ratio=0.7 < 1 with clean_term='separate_pass'.*bind"):
        mixer(x, y)


def test_mixing_switched_off_runs_no_clean_pass():
    x, y = _batch()
    model = TinyNet()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    mixer = SageMixup(mode="batch", mixup_alpha=1.0, num_classes=5, model=model, update_ratio=0.7)
    mixer.mixup_enabled = False
    mixer(x, y)
    assert calls == [] and mixer.loss_weight == 1.0


def test_timm_sage_train_takes_the_clean_term_with_timms_modes(tmp_path):
    from timm_sage.data.idx import FASHION_MNIST_ROOT

    if not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("no Fashion-MNIST")
    from timm_sage.train.config import load_config
    from timm_sage.train.session import Trainer

    cfg = load_config(None, {
        "dataset": "fashion_mnist", "train_subset": 64, "epochs": 1, "batch_size": 16,
        "model": "preactresnet18_tiny", "num_classes": 10, "mixup": 1.0, "cutmix": 1.0,
        "mixup_mode": "batch", "sage_update_ratio": 0.7, "output": str(tmp_path), "experiment": "clean",
    })  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    summary = trainer.fit()
    assert trainer.mixer.mode == "batch" and summary["epochs"] == 1
    # the last step's weight carried the clean gradient (r = 0.7), and its backward consumed it
    assert isinstance(trainer.mixer.loss_weight, LossWeight) and trainer.mixer.loss_weight.clean.consumed
    assert float(trainer.mixer.loss_weight) == pytest.approx(0.7)


def test_mixup_on_epoch_trains_the_first_epochs_unmixed(tmp_path):
    from timm_sage.data.idx import FASHION_MNIST_ROOT

    if not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("no Fashion-MNIST")
    from timm_sage.train.config import load_config
    from timm_sage.train.session import Trainer

    cfg = load_config(None, {
        "dataset": "fashion_mnist", "train_subset": 32, "epochs": 3, "batch_size": 16,
        "model": "preactresnet18_tiny", "num_classes": 10, "mixup": 1.0, "mixup_mode": "sage",
        "mixup_on_epoch": 2, "output": str(tmp_path), "experiment": "on",
    })  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    seen = []
    step = trainer.train_one_step

    def recorded(x, y):
        result = step(x, y)
        seen.append((trainer._epoch, result.method))
        return result

    trainer.train_one_step = recorded
    trainer.fit()
    assert [method for epoch, method in seen if epoch < 2] == ["none"] * 4
    assert [method for epoch, method in seen if epoch == 2] == ["sage"] * 2
    with pytest.raises(ValueError, match="mixup_on_epoch must be >= 0"):
        load_config(None, {"mixup_on_epoch": -1})


def _fashion_trainer(tmp_path, **overrides):
    from timm_sage.data.idx import FASHION_MNIST_ROOT

    if not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("no Fashion-MNIST")
    from timm_sage.train.config import load_config
    from timm_sage.train.session import Trainer

    cfg = load_config(None, {
        "dataset": "fashion_mnist", "train_subset": 32, "epochs": 3, "batch_size": 16,
        "model": "preactresnet18_tiny", "num_classes": 10, "mixup": 1.0, "mixup_mode": "sage",
        "output": str(tmp_path), "experiment": "top1", **overrides,
    })  # fmt: skip
    return Trainer(cfg, progress=False)


def test_mixup_on_train_top1_waits_for_an_epoch_at_the_threshold(tmp_path):
    trainer = _fashion_trainer(tmp_path, mixup_on_train_top1=30.0, mixup_on_epoch=1)
    rows = [{"train_top1": 12.5}, {"train_top1": 31.25}, {"train_top1": 9.0}, {"train_top1": 40.0}]
    trainer.rows = rows
    # epoch e reads the rows of epochs 0..e-1: the first at >= 30 % is epoch 1, so mixing from epoch 2 on,
    # and it stays on when a later (mixed) epoch's top-1 is lower
    assert [trainer.mixing_on(e) for e in range(5)] == [False, False, True, True, True]
    trainer.rows = [{"train_top1": 40.0}]
    assert [trainer.mixing_on(e) for e in range(3)] == [False, True, True]  # mixup_on_epoch 1 still holds
    trainer.cfg.mixup_off_epoch = 2
    assert [trainer.mixing_on(e) for e in range(3)] == [False, True, False]
    trainer.cfg.mixup_on_train_top1 = 0.0  # off: mixup_on_epoch alone
    trainer.rows = []
    trainer.cfg.mixup_off_epoch = 0
    assert [trainer.mixing_on(e) for e in range(3)] == [False, True, True]


def test_mixup_on_train_top1_end_to_end_and_resumed(tmp_path):
    from timm_sage.train.session import StopForTest

    never = _fashion_trainer(tmp_path, mixup_on_train_top1=99.9, experiment="never")
    summary = never.fit()
    assert summary["epochs"] == 3 and [row["mixing"] for row in never.rows] == [False, False, False]
    # a threshold every epoch reaches: epoch 1 trains unmixed, then mixing; and a run stopped in epoch 2
    # and resumed decides the same from its stored rows
    full = _fashion_trainer(tmp_path / "full", mixup_on_train_top1=1e-9)
    full.fit()
    expected = [False] + [any(r["train_top1"] >= 1e-9 for r in full.rows[:e]) for e in range(1, 3)]
    assert [row["mixing"] for row in full.rows] == expected
    stopped = _fashion_trainer(tmp_path / "resumed", mixup_on_train_top1=1e-9)
    with pytest.raises(StopForTest):
        stopped.fit(stop_after_steps=5)  # in epoch 3, after the checkpoint of epoch 2
    checkpoint = stopped.output_dir / "last.pth.tar"
    resumed = _fashion_trainer(tmp_path / "resumed", mixup_on_train_top1=1e-9, resume=str(checkpoint))
    assert resumed.start_epoch == 2
    resumed.fit()
    assert [row["mixing"] for row in resumed.rows] == expected
    assert [row["train_loss"] for row in resumed.rows] == [row["train_loss"] for row in full.rows]


def test_mixup_on_train_top1_is_a_percentage():
    from timm_sage.train.config import load_config

    for bad in (-1.0, 100.0):
        with pytest.raises(ValueError, match="mixup_on_train_top1 must lie in"):
            load_config(None, {"mixup_on_train_top1": bad})
