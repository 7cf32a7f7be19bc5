"""The CIFAR networks: registered in timm, right output shapes, parameter counts from hand formulas."""

from __future__ import annotations

import pytest
import timm
import torch

import timm_sage.models  # noqa: F401  (registers the networks)
from timm_sage.models import MODEL_NAMES


def _bn(c: int) -> int:
    return 2 * c


def preact18_params(num_classes: int, in_chans: int = 3, width: float = 1.0) -> int:
    planes = [round(64 * width * 2**i) for i in range(4)]
    total = in_chans * planes[0] * 9
    inp = planes[0]
    for index, out in enumerate(planes):
        for block in range(2):
            stride = 2 if index > 0 and block == 0 else 1
            total += _bn(inp) + inp * out * 9 + _bn(out) + out * out * 9
            total += inp * out if (stride != 1 or inp != out) else 0
            inp = out
    return total + _bn(inp) + inp * num_classes + num_classes


def wrn_params(depth: int, k: int, num_classes: int) -> int:
    per_stage = (depth - 4) // 6
    total, inp = 3 * 16 * 9, 16
    for index, out in enumerate([16 * k, 32 * k, 64 * k]):
        for block in range(per_stage):
            stride = 2 if index > 0 and block == 0 else 1
            total += _bn(inp) + inp * out * 9 + _bn(out) + out * out * 9
            total += inp * out if (stride != 1 or inp != out) else 0
            inp = out
    return total + _bn(inp) + inp * num_classes + num_classes


def resnext_params(num_classes: int, cardinality: int = 4, base_width: int = 24) -> int:
    total, inp = 3 * 64 * 9 + _bn(64), 64
    for index in range(3):
        planes, inner = 64 * 2**index, cardinality * base_width * 2**index
        out = 4 * planes
        for block in range(3):
            stride = 2 if index > 0 and block == 0 else 1
            total += inp * inner + _bn(inner) + inner * (inner // cardinality) * 9 + _bn(inner)
            total += inner * out + _bn(out)
            total += inp * out + _bn(out) if (stride != 1 or inp != out) else 0
            inp = out
    return total + inp * num_classes + num_classes


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names_are_registered_and_none_collides_with_timm():
    listed = set(timm.list_models())
    for name in MODEL_NAMES:
        assert name in listed and "cifar_" + name in listed
        assert timm.models.get_arch_name(name) == name
        assert timm.get_pretrained_cfg(name).input_size == (3, 32, 32)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("preactresnet18", lambda c: preact18_params(c)),
        ("wrn16_8", lambda c: wrn_params(16, 8, c)),
        ("resnext29_4_24", lambda c: resnext_params(c)),
        ("preactresnet18_tiny", lambda c: preact18_params(c, width=0.125)),
    ],
)
@pytest.mark.parametrize("num_classes", [100])
def test_parameter_counts_match_the_architecture(name, expected, num_classes):
    model = timm.create_model(name, num_classes=num_classes)
    assert _count(model) == expected(num_classes)
    assert model.num_classes == num_classes and model.get_classifier().out_features == num_classes


def test_known_published_sizes():
    # widely quoted sizes: PreActResNet18 (with final BN) 11.17 M, WRN-16-8 10.96 M at 10 classes
    assert _count(timm.create_model("preactresnet18", num_classes=10)) == 11_172_170
    assert _count(timm.create_model("wrn16_8", num_classes=10)) == 10_961_370


@pytest.mark.parametrize("name", ["preactresnet18_tiny", "cifar_wrn16_8", "resnext29_4_24"])
def test_output_shapes_grayscale_and_features(name):
    model = timm.create_model(name, num_classes=7, in_chans=1, width=0.125).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 1, 28, 28))
        features = model.forward_features(torch.randn(2, 1, 32, 32))
        pooled = model.forward_head(features, pre_logits=True)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    downsample = 8 if "preact" in name else 4
    assert features.shape == (2, model.num_features, 32 // downsample, 32 // downsample)
    assert pooled.shape == (2, model.num_features)


def test_width_kwarg_scales_channels_and_tiny_is_an_eighth():
    tiny = timm.create_model("preactresnet18_tiny", num_classes=10)
    eighth = timm.create_model("preactresnet18", num_classes=10, width=0.125)
    assert _count(tiny) == _count(eighth) == preact18_params(10, width=0.125) == 176_178
    assert tiny.num_features == 64
    assert timm.create_model("preactresnet18_tiny", width=0.25).num_features == 128


def test_reset_classifier_and_backward():
    model = timm.create_model("preactresnet18_tiny", num_classes=10, width=0.125)
    model.reset_classifier(3)
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 3)
    assert all(p.grad is not None for p in model.parameters())


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("preactresnet18", pretrained=True)
    with pytest.raises(ValueError, match="width"):
        timm.create_model("preactresnet18", width=0)
    with pytest.raises(ValueError, match="in_chans"):
        timm.create_model("wrn16_8", in_chans=0)
    with pytest.raises(ValueError, match="depth"):
        timm_sage.models.WideResNet(depth=15)
