"""timm features read from signatures: SageMixup on a timm whose Mixup has no ``multi_label`` (timm before
1.0.31, e.g. a pytorch-image-models checkout at 1.0.29.dev0), and the floor's message. The releases
themselves run in tests/test_timm_releases.py."""

from __future__ import annotations

import inspect

import pytest
import timm
import torch
from timm.data import Mixup
from torch import nn

from timm_sage import SageMixup, _timm_compat
from timm_sage import mixup as sage_mixup


def test_the_installed_timm_is_served_and_described() -> None:
    assert _timm_compat.missing_features() == []
    assert _timm_compat.describe_timm() == f"timm {timm.__version__} at {timm.__file__}"
    takes = "multi_label" in inspect.signature(Mixup.__init__).parameters
    assert _timm_compat.MIXUP_TAKES_MULTI_LABEL == takes


@pytest.fixture
def mixup_without_multi_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's Mixup as releases before 1.0.31 have it: the same keywords, no multi_label."""
    original = Mixup.__init__

    def old_init(self, mixup_alpha=1.0, cutmix_alpha=0.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode="batch", correct_lam=True, label_smoothing=0.1, num_classes=1000):  # fmt: skip
        original(self, mixup_alpha, cutmix_alpha, cutmix_minmax, prob, switch_prob, mode, correct_lam,
                 label_smoothing, num_classes)  # fmt: skip
        self.__dict__.pop("multi_label", None)

    monkeypatch.setattr(Mixup, "__init__", old_init)
    monkeypatch.setattr(_timm_compat, "MIXUP_TAKES_MULTI_LABEL", False)


def test_sage_mode_keeps_multi_label_on_a_timm_without_it(mixup_without_multi_label: None) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    mixer = SageMixup(mode="sage", num_classes=3, multi_label=True, model=model, seed=0, label_smoothing=0.2)
    assert mixer.multi_label is True
    x = torch.randn(4, 3, 12, 12)
    dense = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    _, target = mixer(x, dense)
    # Multi-label rows smoothed towards 0.5 (0.2 -> 0.9 / 0.1), mixed with the partner's by lam.
    lam, perm = mixer.last.lam[:, None], mixer.last.perm
    smoothed = dense.float() * 0.8 + 0.1
    assert torch.allclose(target, lam * smoothed + (1 - lam) * smoothed[perm], atol=1e-6)
    plain = SageMixup(mode="batch", num_classes=3)
    assert plain.multi_label is False


def test_timm_modes_refuse_multi_label_on_a_timm_without_it(mixup_without_multi_label: None) -> None:
    with pytest.raises(ValueError, match=r"multi_label=True in mode 'batch'.*timm .* at .*1\.0\.31"):
        SageMixup(mode="batch", num_classes=3, multi_label=True)


def test_the_floor_message_names_version_path_floor_and_what_is_missing(monkeypatch) -> None:
    import timm.utils

    monkeypatch.delattr(timm.utils, "ModelEmaV3")
    assert _timm_compat.missing_features() == ["timm.utils.ModelEmaV3"]
    with pytest.raises(ImportError) as error:
        _timm_compat.check_timm()
    message = str(error.value)
    assert message.startswith(f"timm_sage needs timm {_timm_compat.TIMM_FLOOR} or later")
    assert f"timm {timm.__version__} at {timm.__file__}" in message and "timm.utils.ModelEmaV3" in message
    assert sage_mixup.SageMixup is SageMixup
