"""Cost levers of the SAGE step: ``saliency_size`` (the saliency pass at a fixed size) and
``clean_term="in_batch"`` (the clean loss term from unmixed images of the batch, no parameter gradient in
the pass), through the one step and every entry point (SageMixup, launcher flags, ``timm-sage train``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_one_step import _model, _reads
from test_train import _tiny_config
from torch import nn

from timm_sage import SageConfig, SageMixup, functional, launcher
from timm_sage.core.clean import LossWeight
from timm_sage.train.config import load_config, resolve_config
from timm_sage.train.session import Trainer

SCRIPT = Path(__file__).with_name("timm_train_like.py")
SCRIPT_ARGS = ["--mixup", "1.0", "--mixup-mode", "sage", "--num-samples", "16"]


def _batch(batch: int = 10, height: int = 16, width: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=g), torch.randint(0, 10, (batch,), generator=g)


def _record_input_sizes(model: nn.Module) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    return seen


# ---------------------------------------------------------------------------------- saliency_size
def test_saliency_size_runs_the_pass_with_the_shorter_side_at_that_size():
    model, (x, y) = _model(), _batch()  # 16 x 24: the shorter side 16 becomes 8, the aspect is kept
    seen = _record_input_sizes(model)
    small = functional.saliency_map(model, x, y, size=8)
    assert seen == [(8, 12)] and small.shape == (10, 16, 24) and bool((small >= 0).all())
    # the same code path as saliency_scale: the map of the resized batch, resized back, then blurred
    resized = F.interpolate(x, size=(8, 12), mode="bilinear", antialias=True, align_corners=False)
    channel_map = functional.saliency_map(model, resized, y, blur_kernel=1)
    upsampled = F.interpolate(channel_map[:, None], size=(16, 24), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(functional.saliency_map(model, x, y, size=8, blur_kernel=1), upsampled)
    # scale 0.5 of a 16 x 24 batch is the same size: the same map
    torch.testing.assert_close(small, functional.saliency_map(model, x, y, scale=0.5))
    # a size at least the shorter side is a cap: the pass runs at full resolution, the exact map
    seen.clear()
    torch.testing.assert_close(
        functional.saliency_map(model, x, y, size=16), functional.saliency_map(model, x, y)
    )
    assert seen == [(16, 24), (16, 24)]


@pytest.mark.parametrize(
    ("height", "width", "size", "want"),
    [
        (32, 32, 16, (16, 16)),
        (16, 24, 8, (8, 12)),
        (24, 16, 8, (12, 8)),
        (10, 15, 4, (4, 6)),
        (8, 8, 9, (8, 8)),
    ],
)
def test_pass_size_of_saliency_size(height, width, size, want):
    from timm_sage.core.saliency import pass_size

    assert pass_size(height, width, size=size) == want


def test_saliency_size_in_the_step_keeps_running_statistics_and_shapes():
    model, (x, y) = _model().train(), _batch()
    seen = _record_input_sizes(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    mixer = SageMixup(mode="sage", num_classes=10, model=model, seed=0, saliency_size=8, update_ratio=0.7)
    images, target = mixer(x, y)
    assert seen == [(8, 12)]  # the step's one pass, at the fixed size
    assert mixer.last.saliency.shape == (10, 16, 24) and images.shape == x.shape and target.shape == (10, 10)
    for key, value in model.state_dict().items():
        if key in before:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    # the torchvision transform's pass too
    from timm_sage.transforms import SAGE

    seen.clear()
    SAGE(num_classes=10, model=model, seed=0, saliency_size=8)(x, y)
    assert seen == [(8, 12)]


def test_saliency_size_rules_name_the_options():
    with pytest.raises(ValueError, match="saliency_size=8 and saliency_scale=0.5"):
        SageConfig(saliency_size=8, saliency_scale=0.5)
    with pytest.raises(ValueError, match="saliency_size"):
        SageConfig(saliency_size=0)
    with pytest.raises(TypeError, match="saliency_size"):
        SageConfig(saliency_size=2.5)
    with pytest.raises(ValueError, match="saliency_size=8 and saliency_scale=0.5"):
        functional.saliency_pass(_model(), *_batch(), size=8, scale=0.5)
    with pytest.raises(ValueError, match="saliency_size"):
        SageMixup(mode="sage", num_classes=10, saliency_size=8, saliency_scale=0.5)
    assert SageConfig(saliency_size=8).saliency_size == 8


# ------------------------------------------------------------------------------ clean_term in_batch
@pytest.mark.parametrize(("ratio", "batch"), [(0.7, 10), (0.5, 7), (0.9, 4), (0.75, 10), (0.3, 16)])
def test_in_batch_leaves_round_one_minus_r_of_the_images_clean(ratio, batch):
    model, (x, y) = _model(), _batch(batch)
    mixer = SageMixup(
        mode="sage", num_classes=10, model=model, seed=3, update_ratio=ratio, clean_term="in_batch",
        label_smoothing=0.1,
    )  # fmt: skip
    images, target = mixer(x, y)
    clean = round((1 - ratio) * batch)
    kept = (images == x).flatten(1).all(1)
    assert int(kept.sum()) == clean  # the mixed images differ from their anchors (a partner is pasted)
    lam = mixer.last.lam
    assert torch.equal(lam[kept], torch.ones(clean)) and bool((lam[~kept] < 1).all())
    smoothed = torch.full((batch, 10), 0.1 / 10).scatter_(1, y[:, None], 1 - 0.1 + 0.1 / 10)
    assert torch.equal(target[kept], smoothed[kept])  # their own (smoothed one-hot) targets
    assert not torch.equal(target[~kept], smoothed[~kept])
    assert all(p.grad is None for p in model.parameters())  # input gradients only: no .grad written
    assert float(mixer.loss_weight) == 1.0 and mixer.clean_grad_weight == 0.0


@pytest.mark.filterwarnings("ignore::timm_sage.CleanGradientLostWarning")  # draws only: no training step
def test_in_batch_draws_are_seeded_replayable_and_leave_the_other_draws_alone():
    x, y = _batch()

    def run(clean_term, seed=5):
        mixer = SageMixup(
            mode="sage", num_classes=10, model=_model(), seed=seed, update_ratio=0.6, clean_term=clean_term
        )
        return mixer, [mixer(x, y) + (mixer.last.lam, mixer.last.perm) for _ in range(2)]

    mixer, first = run("in_batch")
    _, again = run("in_batch")
    for a, b in zip(first, again, strict=True):
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)
    assert not torch.equal(first[0][2], first[1][2])  # a fresh choice of clean images per batch
    # replay: the generators' state before a call fixes the call
    state = mixer.rng_state()
    third = mixer(x, y)
    mixer.set_rng_state(state)
    torch.testing.assert_close(mixer(x, y), third, rtol=0, atol=0)
    # the clean images are drawn after perm, prior and translations, which stay the reference's
    draws = dict(alpha=1.0, upper_lambda=0.6, rand_pos=0.01)
    plain = functional.sample_sage_params(10, 16, 24, generator=torch.Generator().manual_seed(2), **draws)
    chosen = functional.sample_sage_params(
        10, 16, 24, generator=torch.Generator().manual_seed(2), clean_share=0.4, **draws
    )
    assert plain.clean is None and chosen.clean.dtype == torch.bool and int(chosen.clean.sum()) == 4
    assert torch.equal(plain.perm, chosen.perm) and plain.prior == chosen.prior
    assert torch.equal(plain.translations, chosen.translations)
    _, separate = run("separate_pass")
    assert torch.equal(first[0][3], separate[0][3])  # the same partners as the reference's term


def test_in_batch_at_r_1_is_separate_pass():
    x, y = _batch()
    outputs = []
    for clean_term in ("separate_pass", "in_batch"):
        mixer = SageMixup(mode="sage", num_classes=10, model=_model(), seed=1, clean_term=clean_term)
        outputs.append((*mixer(x, y), mixer.last.lam, mixer.loss_weight))
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert bool((outputs[1][2] < 1).all())  # nothing left clean


def test_in_batch_gradient_is_the_mixed_batch_loss_alone():
    # in_batch: the caller's loss on the returned batch, at weight 1, is the whole update; separate_pass
    # keeps (1 - r) d l_clean / d params from the call and its loss_weight carries it into the backward.
    x, y = _batch()
    for clean_term, carried in (("in_batch", False), ("separate_pass", True)):
        model = _model()
        mixer = SageMixup(
            mode="sage", num_classes=10, model=model, seed=0, update_ratio=0.7, clean_term=clean_term
        )
        images, target = mixer(x, y)
        assert model[0].weight.grad is None  # the call writes no gradient either way
        assert isinstance(mixer.loss_weight, LossWeight) is carried
        loss = torch.sum(-target * torch.log_softmax(model(images), -1), -1).mean()
        want = torch.autograd.grad(loss * float(mixer.loss_weight), model[0].weight, retain_graph=True)[0]
        (loss * mixer.loss_weight).backward()
        assert torch.allclose(model[0].weight.grad, want, atol=1e-7) is not carried
    with pytest.raises(ValueError, match="clean_term"):
        SageConfig(clean_term="both")


@pytest.mark.parametrize(
    "options", [{"update_ratio": 0.7, "clean_term": "in_batch"}, {"saliency_size": 8, "update_ratio": 0.7}]
)
def test_levers_make_no_host_read(options):
    x, y = _batch()
    mixer = SageMixup(mode="sage", num_classes=10, model=_model(), seed=0, **options)
    assert _reads(mixer, x, y) == 0


def test_in_batch_non_finite_pass_still_returns_the_plain_batch():
    model, (x, y) = _model(), _batch()
    with torch.no_grad():
        model[-1].bias.fill_(float("nan"))
    mixer = SageMixup(
        mode="sage", num_classes=10, model=model, seed=0, update_ratio=0.5, clean_term="in_batch"
    )
    images, _ = mixer(x, y)
    assert torch.equal(images, x) and torch.equal(mixer.last.lam, torch.ones(10))
    assert float(mixer.loss_weight) == 1.0


# ------------------------------------------------------------------------------------ entry points
def test_launcher_flags_reach_the_mixer():
    module = launcher.run(
        SCRIPT, [*SCRIPT_ARGS, "--sage-saliency-size", "8", "--sage-clean-term", "in_batch",
                            "--sage-update-ratio", "0.5"],
    )  # fmt: skip
    (mixer,) = vars(module)["__timm_sage_plugin__"].mixers
    assert mixer.config.saliency_size == 8 and mixer.config.clean_term == "in_batch"
    assert mixer.last.method == "sage"
    assert int((mixer.last.lam == 1).sum()) == round(0.5 * mixer.last.lam.shape[0])
    with pytest.raises(SystemExit):
        launcher.run(SCRIPT, [*SCRIPT_ARGS, "--sage-clean-term", "sometimes"])


def test_train_keys_are_parsed_checked_and_train_one_epoch(tmp_path):
    cfg = resolve_config(
        {"mixup": 1.0, "mixup_mode": "sage", "sage_saliency_size": 8, "sage_clean_term": "in_batch"}
    )
    assert cfg.sage_saliency_size == 8 and cfg.sage_clean_term == "in_batch"
    with pytest.raises(ValueError, match="sage_saliency_size"):
        resolve_config(
            {"mixup": 1.0, "mixup_mode": "sage", "sage_saliency_size": 8, "sage_saliency_scale": 0.5}
        )
    with pytest.raises(ValueError, match="sage_clean_term"):
        resolve_config({"mixup": 1.0, "mixup_mode": "sage", "sage_clean_term": "half"})
    config = {**_tiny_config(tmp_path), "epochs": 1, "model_ema": False, "sage_saliency_size": 6,
              "sage_clean_term": "in_batch"}  # fmt: skip
    path = tmp_path / "levers.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = Trainer(load_config(path, ["--sage-saliency-size", "8"]), progress=False)  # the CLI wins
    assert trainer.mixer.config.saliency_size == 8 and trainer.mixer.config.clean_term == "in_batch"
    summary = trainer.fit()
    assert summary["epochs"] == 1
    assert int((trainer.mixer.last.lam == 1).sum()) == round(0.3 * trainer.mixer.last.lam.shape[0])
