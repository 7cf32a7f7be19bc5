"""Forward-only saliency (``saliency_source`` "cam" / "features") and the EMA saliency model.

* the class activation map of a hand-built network with known weights, against values worked out by hand;
* ViT tokens on the patch grid, with and without class and register tokens (against timm's own reshaping,
  and the CAM's mean against the model's logit);
* the repository's CIFAR networks expose ``forward_features`` and a linear classifier that a CAM reads;
* models whose head cannot be read, and the option rules, are ValueErrors naming what is missing;
* no host read in a steady-state call; the same map under ``torch.compile``; the EMA copy drives the maps.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.nn.functional as F
from test_one_step import _reads
from timm.utils import ModelEmaV3
from torch import nn

import timm_sage.models  # noqa: F401  (registers the CIFAR networks)
from timm_sage import SageConfig, SageMixup
from timm_sage.core import cam
from timm_sage.core.feature_saliency import feature_saliency, read_head
from timm_sage.core.saliency import blur_maps
from timm_sage.transforms import SAGE


class HandNet(nn.Module):
    """Features: ``relu(x)`` and ``relu(-x)`` of a one-channel image (a 1x1 convolution, weights 1 and
    -1), average-pooled by ``pool`` (1: the image's own grid); a linear classifier with known rows."""

    def __init__(self, pool: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(2, 3)
        self.pool = pool
        self.num_features = 2
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, 0.0, -0.25]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.conv(x)), self.pool)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


IMAGE = torch.tensor([[1.0, -2.0], [3.0, 0.0]]).view(1, 1, 2, 2)
# relu(x) = [[1, 0], [3, 0]], relu(-x) = [[0, 2], [0, 0]]; the rows (1, 0), (0, 1), (2, -1):
HAND_CAM = {
    0: [[1.0, 0.0], [3.0, 0.0]],
    1: [[0.0, 2.0], [0.0, 0.0]],
    2: [[2.0, -2.0], [6.0, 0.0]],  # 2 * relu(x) - relu(-x)
}
HAND_NORM = [[1.0, 2.0], [3.0, 0.0]]  # sqrt(relu(x)^2 + relu(-x)^2)


@pytest.mark.parametrize("label", [0, 1, 2])
def test_cam_of_a_hand_built_network(label):
    net = HandNet()
    features = net.forward_features(IMAGE)
    raw = cam.class_activation_maps(features, net.fc.weight, torch.tensor([label]))
    assert raw[0].tolist() == HAND_CAM[label]
    # With an average pool then a linear layer, the CAM's mean plus the bias is the label's logit.
    logit = net(IMAGE)[0, label]
    torch.testing.assert_close(raw[0].mean() + net.fc.bias[label], logit)
    # The finished map: shifted to a zero minimum (the hand CAM of label 2 has minimum -2), no upsampling
    # (features on the image's grid), no blur (kernel 1).
    head = read_head(net, "cam")
    result = feature_saliency(head, IMAGE, torch.tensor([label]), source="cam", loss="cross_entropy",
                              blur_kernel=1, blur_sigma=1.0)  # fmt: skip
    shifted = {0: HAND_CAM[0], 1: HAND_CAM[1], 2: [[4.0, 0.0], [8.0, 2.0]]}[label]
    assert result.saliency[0].tolist() == shifted and bool(result.finite)
    torch.testing.assert_close(result.loss, F.cross_entropy(net(IMAGE), torch.tensor([label])))


def test_cam_of_a_soft_target_and_the_feature_norm_by_hand():
    net = HandNet()
    features = net.forward_features(IMAGE)
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    assert cam.class_activation_maps(features, net.fc.weight, soft)[0].tolist() == [[0.5, 1.0], [1.5, 0.0]]
    torch.testing.assert_close(cam.feature_norm_maps(features)[0], torch.tensor(HAND_NORM))
    result = feature_saliency(read_head(net, "features"), IMAGE, soft, source="features", loss="bce_softmax",
                              blur_kernel=1, blur_sigma=1.0)  # fmt: skip
    torch.testing.assert_close(result.saliency[0], torch.tensor(HAND_NORM))


def test_low_resolution_maps_are_upsampled_bilinearly_then_blurred():
    """Features pooled 2x (a 4x4 image, a 2x2 map): the saliency is the bilinear upsampling of the hand CAM,
    then the paper's blur (kernel 3, sigma 1)."""
    net = HandNet(pool=2)
    image = torch.tensor(
        [[2.0, 0.0, -4.0, 0.0], [0.0, 2.0, 0.0, 0.0], [6.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    image = image.view(1, 1, 4, 4)
    # Pooled: relu(x) means [[1, 0], [2, 0]], relu(-x) means [[0, 1], [0, 0]]; label 2: [[2, -1], [4, 0]].
    low = torch.tensor([[[3.0, 0.0], [5.0, 1.0]]])  # shifted by its minimum, -1
    expected = blur_maps(
        F.interpolate(low[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0], 3
    )
    result = feature_saliency(read_head(net, "cam"), image, torch.tensor([2]), source="cam",
                              loss="bce_softmax", blur_kernel=3, blur_sigma=1.0)  # fmt: skip
    torch.testing.assert_close(result.saliency, expected)


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_tokens_to_grid_drops_prefix_tokens_and_keeps_raster_order(prefix):
    # Token k (after the prefix) carries the value k in every channel; prefix tokens carry -1.
    patches = torch.arange(6.0).view(1, 6, 1).expand(2, 6, 3)
    tokens = torch.cat([torch.full((2, prefix, 3), -1.0), patches], 1)
    grid = cam.tokens_to_grid(tokens, prefix, (2, 3))
    assert grid.shape == (2, 3, 2, 3)
    assert grid[1, 2].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match="prefix"):
        cam.tokens_to_grid(tokens, prefix + 1, (2, 3))


@pytest.mark.parametrize(("class_token", "reg_tokens"), [(True, 0), (False, 0), (True, 4), (False, 2)])
def test_vit_cam_on_the_patch_grid_without_class_and_register_tokens(class_token, reg_tokens):
    torch.manual_seed(0)
    # Average pooling of the patch tokens and no norm after it: the CAM's mean plus the bias is the logit
    # exactly when the prefix tokens are dropped and every patch token is kept.
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=5, class_token=class_token,
        reg_tokens=reg_tokens, global_pool="avg", fc_norm=False,
    ).eval()  # fmt: skip
    x = torch.randn(3, 3, 32, 32)
    y = torch.tensor([0, 4, 2])
    head = read_head(vit, "cam")
    assert head.num_prefix_tokens == int(class_token) + reg_tokens
    with torch.no_grad():
        tokens = vit.forward_features(x)
        grid = head.grid_features(tokens, (32, 32))
        # timm's own reshaping of the last block's normalised patch tokens to (B, C, h, w)
        reference = vit.forward_intermediates(
            x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        torch.testing.assert_close(grid, reference[-1])
        maps = cam.class_activation_maps(grid, vit.head.weight, y)
        logits = vit(x)
    assert maps.shape == (3, 4, 4)
    torch.testing.assert_close(maps.mean((1, 2)) + vit.head.bias[y], logits[torch.arange(3), y])
    mixer = SageMixup(mixup_alpha=1.0, mode="sage", num_classes=5, model=vit, saliency_source="cam", seed=0)
    mixer(x, y)
    assert mixer.last.saliency.shape == (3, 32, 32) and bool(mixer.last.mixed)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("preactresnet18", {"width": 0.125}),
        ("preactresnet18_tiny", {}),
        ("wrn16_8", {"width": 0.125}),
        ("resnext29_4_24", {"width": 0.25}),
    ],
)
def test_repository_models_expose_features_and_a_linear_head(name, kwargs):
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=7, **kwargs).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 6])
    head = read_head(net, "cam")
    with torch.no_grad():
        features = head.grid_features(head.features(x), (32, 32))
        maps = cam.class_activation_maps(features, head.weight(), y)
        logits = net(x)
    assert features.shape[1] == net.num_features and maps.shape[0] == 2
    torch.testing.assert_close(maps.mean((1, 2)) + net.fc.bias[y], logits[torch.arange(2), y])


def test_unreadable_heads_and_broken_rules_are_value_errors_naming_what_is_missing():
    kwargs = dict(mixup_alpha=1.0, mode="sage", num_classes=10)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(ValueError, match="forward_features"):
        SageMixup(**kwargs, model=plain, saliency_source="features")
    headless = timm.create_model("preactresnet18_tiny", num_classes=0)
    with pytest.raises(ValueError, match="get_classifier.*num_classes=0"):
        SageMixup(**kwargs, model=headless, saliency_source="cam")
    SageMixup(**kwargs, model=headless, saliency_source="features")  # no classifier needed
    conv_head = timm.create_model("mobilenetv3_small_050", num_classes=10)  # pool, conv_head, classifier
    with pytest.raises(ValueError, match="num_features"):
        SageMixup(**kwargs, model=conv_head, saliency_source="cam")
    # timm's modes run no saliency pass: the saliency options do not ask anything of their model.
    SageMixup(mixup_alpha=1.0, mode="batch", num_classes=10, model=plain, saliency_source="cam")
    # A model given later: the same error at bind.
    mixer = SageMixup(**kwargs, saliency_source="cam")
    with pytest.raises(ValueError, match="forward_features"):
        mixer.bind(plain)
    net = timm.create_model("preactresnet18_tiny", num_classes=10)
    with pytest.raises(ValueError, match="ema_model"):
        SageMixup(**kwargs, model=net, saliency_model="ema")
    with pytest.raises(ValueError, match="clean_term"):
        SageConfig(saliency_source="cam", update_ratio=0.7)
    with pytest.raises(ValueError, match="clean_term"):
        SageConfig(saliency_model="ema", update_ratio=0.7)
    SageConfig(saliency_source="cam", update_ratio=0.7, clean_term="in_batch")
    with pytest.raises(ValueError, match="saliency_source"):
        SageConfig(saliency_source="attention")
    with pytest.raises(ValueError, match="saliency_model"):
        SAGE(num_classes=10, saliency_model="ema")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("preactresnet18_tiny", num_classes=10, width=0.0625)


def _data(batch: int = 8, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g)


@pytest.mark.parametrize(
    "options",
    [
        {"saliency_source": "cam"},
        {"saliency_source": "features", "saliency_scale": 0.5},
        {"saliency_source": "cam", "update_ratio": 0.7, "clean_term": "in_batch", "search_size": 16},
        {"saliency_source": "cam", "saliency_model": "ema"},
        {"saliency_source": "gradient", "saliency_model": "ema"},
        {"saliency_source": "features", "saliency_model": "ema", "saliency_size": 16},
    ],
)
def test_steady_state_call_reads_nothing_back(options):
    net = _net()
    ema = ModelEmaV3(net, decay=0.9)
    mixer = SageMixup(
        mixup_alpha=1.0, mode="sage", num_classes=10, model=net, ema_model=ema, seed=0, **options
    )
    x, y = _data()
    assert _reads(mixer, x, y) == 0


def test_same_map_under_torch_compile():
    torch._dynamo.reset()
    x, y = _data()
    eager_net = _net()
    eager = SageMixup(
        mixup_alpha=1.0, mode="sage", num_classes=10, model=eager_net, saliency_source="cam", seed=0
    )
    eager(x, y)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled_net = _net()
    compiled = SageMixup(mixup_alpha=1.0, mode="sage", num_classes=10, model=torch.compile(compiled_net,
                         backend=counter), saliency_source="cam", seed=0)  # fmt: skip
    compiled(x, y)
    assert counter.frame_count >= 1  # the feature forward ran compiled
    torch.testing.assert_close(compiled.last.saliency, eager.last.saliency, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.last.lam, eager.last.lam)
    # The pure map function traces whole (no graph break) and agrees with eager.
    features = torch.randn(8, 16, 4, 4)
    weight = torch.randn(10, 16)
    maps = torch.compile(cam.forward_only_maps, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(
        maps(features, "cam", (16, 16), weight=weight, target=y),
        cam.forward_only_maps(features, "cam", (16, 16), weight=weight, target=y),
    )
    torch._dynamo.reset()


def test_ema_copy_gives_the_maps_and_the_live_model_is_untouched():
    net = _net()
    ema = ModelEmaV3(net, decay=0.5)
    with torch.no_grad():  # an EMA that differs from the live model
        for p in ema.module.parameters():
            p.mul_(0.5)
    x, y = _data()
    mixer = SageMixup(mixup_alpha=1.0, mode="sage", num_classes=10, model=net, ema_model=ema, seed=0,
                      saliency_source="cam", saliency_model="ema")  # fmt: skip
    live_stats = copy.deepcopy(net.state_dict())
    mixer(x, y)
    # The EMA pass ran in the EMA's own (eval) mode: the live model's BatchNorm statistics did not move.
    for key, value in net.state_dict().items():
        assert torch.equal(value, live_stats[key]), key
    head = read_head(ema.module, "cam")
    expected = feature_saliency(head, x, y, source="cam", loss="bce_softmax", blur_kernel=5, blur_sigma=1.0)
    torch.testing.assert_close(mixer.last.saliency, expected.saliency)
    live = feature_saliency(read_head(net, "cam"), x, y, source="cam", loss="bce_softmax", blur_kernel=5,
                            blur_sigma=1.0)  # fmt: skip
    assert not torch.allclose(mixer.last.saliency, live.saliency)


def test_transform_takes_cam_saliency_from_its_bound_model():
    net = _net().train()
    x, y = _data()
    transform = SAGE(num_classes=10, model=net, seed=0, saliency_source="cam")
    out_x, out_y = transform(x, y)
    assert out_x.shape == x.shape and out_y.shape == (8, 10)
    with pytest.raises(ValueError, match="get_classifier"):
        SAGE(
            num_classes=10,
            model=timm.create_model("preactresnet18_tiny", num_classes=0),
            saliency_source="cam",
        )


def test_plugin_takes_the_ema_of_train_py_model_ema(monkeypatch):
    """train.py's --model-ema (the EMA inside its training task) is the saliency model of
    sage_saliency_model ema; the EMA the maps came from is the one train.py updates after each step."""
    from test_timm_train_integration import SAGE as SAGE_ARGS
    from test_timm_train_integration import SCRIPT, STATE_KEY

    from timm_sage import launcher
    from timm_sage.mixup import unwrap_model

    seen = []
    call = SageMixup.__call__

    def spy(self, x, target, saliency=None):
        ema = self.ema_model
        before = None if ema is None else {k: v.clone() for k, v in ema.state_dict().items()}
        out = call(self, x, target, saliency)
        seen.append((x.clone(), target.clone(), before, self.last.saliency.clone()))
        return out

    monkeypatch.setattr(SageMixup, "__call__", spy)
    flags = ["--sage-saliency-source", "cam", "--sage-saliency-model", "ema", "--num-samples", "24"]
    flags += ["--model", "preactresnet18_tiny"]  # a 2x2 last feature map at 16 x 16 (test_resnet's is 1x1)
    module = launcher.run(
        SCRIPT, [*SAGE_ARGS, "--no-prefetcher", "--model-ema", "--model-ema-decay", "0.5", *flags]
    )
    (mixer,) = vars(module)[STATE_KEY].mixers
    task_ema = module.RUN["task"].get_trainable_module(ema=True)
    assert mixer.ema_model is unwrap_model(task_ema) and mixer.feature_head.module is mixer.ema_model
    assert mixer.model is unwrap_model(module.RUN["model"]) and mixer.model is not mixer.ema_model
    assert len(seen) == 3
    # The last call's maps are those of the EMA as it was then (updated by the two steps before it).
    x, target, ema_state, maps = seen[-1]
    probe = copy.deepcopy(mixer.ema_model)
    probe.load_state_dict(ema_state)
    expected = feature_saliency(read_head(probe, "cam"), x, target, source="cam", loss="bce_softmax",
                                blur_kernel=5, blur_sigma=1.0)  # fmt: skip
    torch.testing.assert_close(maps, expected.saliency)
    first_ema = seen[0][2]
    assert any(not torch.equal(first_ema[k], v) for k, v in ema_state.items())  # the EMA moved
    with pytest.raises(RuntimeError, match="--model-ema"):
        launcher.run(SCRIPT, [*SAGE_ARGS, "--no-prefetcher", *flags])


def test_timm_sage_train_config_needs_model_ema_for_the_ema_saliency_model():
    from timm_sage.train.config import resolve_config

    base = {"mixup": 1.0, "mixup_mode": "sage", "sage_saliency_source": "cam"}
    with pytest.raises(ValueError, match="model_ema"):
        resolve_config({**base, "sage_saliency_model": "ema"})
    cfg = resolve_config({**base, "sage_saliency_model": "ema", "model_ema": True})
    assert (cfg.sage_saliency_source, cfg.sage_saliency_model) == ("cam", "ema")
    with pytest.raises(ValueError, match="sage_clean_term"):
        resolve_config({**base, "sage_update_ratio": 0.7})


def test_a_one_by_one_feature_map_is_refused_not_mixed_blind():
    """timm's resnet10t (output stride 32) on 28 x 28 images: a 1x1 last feature map, no spatial map."""
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    for source in ("cam", "features"):
        mixer = SageMixup(mixup_alpha=1.0, mode="sage", num_classes=10, model=net, saliency_source=source)
        with pytest.raises(ValueError, match="1x1"):
            mixer(x, y)
    SageMixup(mixup_alpha=1.0, mode="sage", num_classes=10, model=net, saliency_source="cam")(
        torch.randn(4, 1, 64, 64), y
    )  # 2x2 at 64 x 64: a (coarse) map
