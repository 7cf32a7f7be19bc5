"""The one SAGE step and the one options object (issue: one step, one set of options, no host syncs).

* a steady-state ``SageMixup`` sage-mode call reads no device value back to the host and runs no op that
  syncs on a GPU (counted with a ``TorchDispatchMode``: ``aten._local_scalar_dense``, what ``.item()``,
  ``bool()`` and ``float()`` call, and every op whose output size depends on values; ``.tolist()`` with a
  ``TorchFunctionMode``), for every option set, the pooled search included;
* the trainer's step and a train.py-shaped script with the plugin train to the same weights;
* ``SageConfig`` validates once, with errors naming the option, and every entry point derives from it;
* the named ablations change the searched candidates as documented; cheap saliency runs at low resolution.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import random_seed
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from timm_sage import SageConfig, SageMixup, functional, launcher, plugin
from timm_sage.config import option_infos
from timm_sage.core import mixing
from timm_sage.train.config import SUPPORTED
from timm_sage.train.loop import train_step

SCRIPT = Path(__file__).with_name("timm_train_like.py")


# Ops that read device values back to the host, or whose output size depends on values (the host must
# wait for the device to learn it): each one is a sync on a GPU.
_SYNCING_OPS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), bool(), int(), float()
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,  # torch.equal returns a Python bool
    torch.ops.aten.nonzero.default,
    torch.ops.aten.nonzero_numpy.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten._unique.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_dim.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten.unique_dim_consecutive.default,
}
_INDEXING_OPS = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}
_REPEAT_INTERLEAVE = {torch.ops.aten.repeat_interleave.Tensor, torch.ops.aten.repeat_interleave.self_Tensor}


def _syncs(func, args, kwargs) -> bool:
    if func in _SYNCING_OPS:
        return True
    if func in _INDEXING_OPS:  # boolean-mask indexing: the mask's true count sizes the result
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if func in _REPEAT_INTERLEAVE:  # the repeats' sum sizes the result unless output_size is given
        return kwargs.get("output_size") is None and not (len(args) > 3 and args[3] is not None)
    return False


class _SyncingOpCounter(TorchDispatchMode):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            self.events.append(str(func))
        return func(*args, **kwargs)


class _ToListCounter(TorchFunctionMode):
    """``Tensor.tolist()`` copies the values out without dispatching an aten op on a CPU tensor."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:
            self.events.append(f"tolist {tuple(args[0].shape)} {args[0].dtype}")
        return func(*args, **(kwargs or {}))


class HostReadCounter:
    """Counts every host read of a tensor value and every op that syncs on a GPU (see ``_SYNCING_OPS``);
    ``events`` names them, ``reads`` counts them."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self._modes = (_ToListCounter(self.events), _SyncingOpCounter(self.events))

    @property
    def reads(self) -> int:
        return len(self.events)

    def __enter__(self) -> HostReadCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


def _reads(mixer: SageMixup, x: torch.Tensor, y: torch.Tensor) -> int:
    """Host reads of a steady-state training step: the mixer's call, then the backward of the mixed loss
    weighted by ``loss_weight`` (which carries the clean gradient with ``update_ratio < 1``)."""

    def step() -> None:
        images, target = mixer(x, y)
        loss = torch.sum(-target * F.log_softmax(mixer.model(images), -1), -1).mean()
        (loss * mixer.loss_weight).backward()

    step()  # warm-up: lazy initialisation is not steady state
    with HostReadCounter() as counter:
        step()
    return counter.reads


def test_counter_sees_a_host_read():
    with HostReadCounter() as counter:
        bool(torch.ones(2).sum() > 0)
        float(torch.ones(()))
    assert counter.reads == 2


def test_counter_sees_every_op_that_syncs_on_a_gpu():
    values = torch.tensor([3, 1, 3, 0])
    reads = {
        "item": lambda: values[0].item(),
        "tolist": lambda: values.tolist(),
        "equal": lambda: torch.equal(values, values),
        "nonzero": lambda: values.nonzero(),
        "where with one argument": lambda: torch.where(values > 0),
        "unique": lambda: torch.unique(values),
        "unique sorted=False": lambda: torch.unique(values, sorted=False),
        "unique dim": lambda: torch.unique(values.view(2, 2), dim=0),
        "unique_consecutive": lambda: torch.unique_consecutive(values),
        "unique_consecutive dim": lambda: torch.unique_consecutive(values.view(2, 2), dim=0),
        "masked_select": lambda: values.masked_select(values > 1),
        "boolean-mask index": lambda: values[values > 1],
        "boolean-mask assignment": lambda: values.clone().__setitem__(values > 1, 0),
        "repeat_interleave": lambda: torch.repeat_interleave(values),
        "repeat_interleave of a tensor": lambda: values.repeat_interleave(values),
    }
    for name, read in reads.items():
        with HostReadCounter() as counter:
            read()
        assert counter.reads >= 1, f"{name} was not counted"
    with HostReadCounter() as counter:  # what the hot path may do: sizes known from shapes alone
        values[torch.tensor([0, 2])]
        values.repeat_interleave(values, output_size=7)
        torch.where(values > 1, values, 0)
        values.argmax()
    assert counter.events == []


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"update_ratio": 0.7},
        {"update_ratio": 0.5, "saliency_scale": 0.5, "saliency_loss": "cross_entropy"},
        {"rearrangement": "none"},
        {"rearrangement": "random", "saliency_reduce": "l2"},
        {"search_size": 8},
        {"search_size": 5, "update_ratio": 0.5, "saliency_scale": 0.5},
        {"search_size": 8, "amp_dtype": torch.bfloat16, "saliency_loss": "cross_entropy"},
        {"amp_dtype": torch.float16, "update_ratio": 0.7},
        {"cutmix_alpha": 1.0, "prob": 0.7},
    ],
)
@pytest.mark.filterwarnings("ignore::timm_sage.CleanGradientLostWarning")  # the warm-up takes no backward
def test_steady_state_sage_call_makes_no_host_read(options):
    x, y = _batch()
    mixer = SageMixup(mode="sage", num_classes=10, model=_model(), seed=0, **options)
    while mixer(x, y) and mixer.last.method != "sage":  # warm-up: the first SAGE call checks the labels
        pass
    methods = set()
    for _ in range(4):
        with HostReadCounter() as counter:
            images, target = mixer(x, y)
            # the weighted loss's backward, which adds the clean term the weight carries (r < 1)
            loss = torch.sum(-target * F.log_softmax(mixer.model(images), -1), -1).mean()
            (loss * mixer.loss_weight).backward()
        assert counter.events == []
        methods.add(mixer.last.method)
    assert "sage" in methods


def test_the_cpu_overlap_search_kernel_makes_no_host_read():
    from timm_sage.core import search

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, 48, 48, generator=g), torch.randint(0, 10, (8,), generator=g)
    assert search.choose_kernel(x[:, 0], torch.zeros(1, 2, dtype=torch.long)) == "overlap"
    mixer = SageMixup(mode="sage", num_classes=10, model=_model(), seed=0)
    mixer(x, y)
    with HostReadCounter() as counter:
        mixer(x, y)
    # The CPU-only kernel walks the candidates in Python: the values of the host tensor they were drawn
    # in (nothing on a device; on a GPU the windows kernel runs instead). Nothing else is read.
    candidates = math.floor(95 * 95 * mixer.rand_pos)
    assert counter.events == [f"tolist ({candidates}, 2) torch.int64"]


def test_sage_call_with_cutmix_and_amp_makes_no_host_read():
    x, y = _batch()
    mixer = SageMixup(
        mode="sage", num_classes=10, model=_model(), seed=0, cutmix_alpha=1.0, amp_dtype=torch.bfloat16
    )
    while mixer(x, y) and mixer.last.method != "sage":  # warm-up: the first SAGE call checks the labels
        pass
    methods = set()
    for _ in range(6):
        with HostReadCounter() as counter:
            mixer(x, y)
        methods.add(mixer.last.method)
        assert counter.reads == 0
    assert methods == {"sage", "cutmix"}


def test_a_bool_read_in_the_internal_mixing_path_is_caught(monkeypatch):
    """The guard works: one ``bool(tensor)`` put back into the mixing kernel makes the count non-zero."""
    original = mixing.plan

    def plan_with_a_check(saliency, *args, **kwargs):
        if not bool(torch.isfinite(saliency).all()):  # the kind of check the hot path must not do
            raise ValueError("saliency must be finite")
        return original(saliency, *args, **kwargs)

    monkeypatch.setattr(mixing, "plan", plan_with_a_check)
    x, y = _batch()
    assert _reads(SageMixup(mode="sage", num_classes=10, model=_model(), seed=0), x, y) == 1


# ---------------------------------------------------------------------- one step, every entry point
def test_trainer_step_and_train_py_with_the_plugin_reach_the_same_weights():
    """The same config (SAGE, r = 0.5, seed 5, SGD) through ``timm-sage train``'s step and through a
    train.py-shaped script with the plugin: identical batches give identical weights."""
    module = launcher.run(
        SCRIPT,
        ["--mixup", "1.0", "--mixup-mode", "sage", "--no-prefetcher", "--no-aug", "--smoothing", "0.0",
         "--sage-update-ratio", "0.5", "--sage-seed", "5", "--num-samples", "24", "--seed", "42"],
    )  # fmt: skip
    state = vars(module)[plugin.STATE_KEY]
    (script_mixer,) = state.mixers
    assert script_mixer.update_ratio == 0.5
    history = module.HISTORY
    assert len(history) == 3
    # The raw batches the script drew (timm's loader, un-mixed): replay them through the trainer's step.
    loader = module.RUN["loader"]
    random_seed(42, 0)
    model = timm.create_model("test_resnet", num_classes=4, pretrained=False)
    replay_batches = [(x.float(), y) for x, y in loader]  # no augmentation: the same tensors again
    assert len(replay_batches) == 3
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, momentum=0.9, weight_decay=0.0)
    mixer = SageMixup(
        mixup_alpha=1.0,
        mode="sage",
        label_smoothing=0.0,
        num_classes=4,
        update_ratio=0.5,
        seed=5,
        model=model,
    )
    model.train()
    for (x, y), recorded in zip(replay_batches, history, strict=True):
        optimizer.zero_grad(set_to_none=True)
        result = train_step(model, x, y, criterion=SoftTargetCrossEntropy(), mixer=mixer)
        optimizer.step()
        torch.testing.assert_close(result.inputs, recorded["input"])
        # train.py logs the mixed loss before its weight r (as the trainer does), yet trains on r * it
        assert recorded["loss"] == pytest.approx(float(result.loss), rel=1e-5)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, recorded["params"][name], rtol=1e-4, atol=1e-6, msg=name)
    assert float(mixer.loss_weight) == 0.5


def test_sage_mixup_loss_weight_example_is_the_papers_loss():
    """The docstring's two lines, ``loss = criterion(model(x), t) * mixup_fn.loss_weight``, give the
    gradient of ``(1 - r) * l_clean + r * l_mixed`` with the BCE saliency loss as l_clean."""
    model, (x, y) = _model(), _batch()
    reference = _model()
    mixup_fn = SageMixup(
        mode="sage", num_classes=10, label_smoothing=0.0, model=model, seed=3, update_ratio=0.7
    )
    mixed, target = mixup_fn(x, y)
    loss = SoftTargetCrossEntropy()(model(mixed), target) * mixup_fn.loss_weight
    loss.backward()
    params = list(reference.parameters())
    clean = F.binary_cross_entropy(torch.softmax(reference(x), -1), F.one_hot(y, 10).float())
    want = torch.autograd.grad(0.3 * clean + 0.7 * SoftTargetCrossEntropy()(reference(mixed), target), params)
    for param, expected in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ one options object
def test_config_validates_once_with_errors_naming_the_option():
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        SageConfig(blur_kernel=4)
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        SageMixup(mode="sage", num_classes=10, blur_kernel=4)  # at construction, not at the first batch
    with pytest.raises(ValueError, match="saliency_scale"):
        SageConfig(saliency_scale=0.0)
    with pytest.raises(ValueError, match="rearrangement"):
        SageConfig(rearrangement="shuffle")
    with pytest.raises(TypeError, match="search_size"):
        SageConfig(search_size=2.5)
    with pytest.raises(ValueError, match="sage_update_ratio"):
        SageConfig.from_mapping({"sage_update_ratio": 1.5}, prefix="sage_")
    with pytest.raises(ValueError, match="sage_upper_lamda"):
        SageConfig.from_mapping({"sage_upper_lamda": 0.5}, prefix="sage_")
    with pytest.raises(ValueError, match="blur_kernel=5 needs images larger than 2"):
        SageConfig().check_image_size(2, 16)
    with pytest.raises(ValueError, match="either as config"):
        SageMixup(mode="sage", num_classes=10, config=SageConfig(), upper_lambda=0.5)
    assert SageConfig(upper_lambda=1).upper_lambda == 1.0 and isinstance(
        SageConfig(upper_lambda=1).upper_lambda, float
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        SageConfig().upper_lambda = 0.5  # type: ignore[misc]


def test_every_entry_point_derives_its_options_from_sage_config():
    names = [info.name for info in option_infos()]
    assert list(plugin.SAGE_OPTIONS) == [*names, "seed", "preset"]
    for info in option_infos():
        assert SUPPORTED[f"sage_{info.name}"] == (info.kind.__name__, info.default)
        assert f"--sage-{info.name.replace('_', '-')}" in launcher.USAGE
        assert getattr(SageMixup(mode="sage", num_classes=10), info.name) == info.default
    mixer = SageMixup(mode="sage", num_classes=10, config=SageConfig(rand_pos=0.05))
    assert mixer.rand_pos == 0.05 and mixer.config == SageConfig(rand_pos=0.05)


# ------------------------------------------------------------------------------ ablations, cheap saliency
def test_rearrangement_none_searches_only_the_zero_translation():
    g = torch.Generator().manual_seed(0)
    params = functional.sample_sage_params(
        8, 16, 16, alpha=1.0, upper_lambda=0.6, rand_pos=0.05, generator=g, rearrangement="none"
    )
    assert params.translations.tolist() == [[0, 0]]
    x, y = _batch()
    mixer = SageMixup(mode="sage", num_classes=10, model=_model(), seed=0, rearrangement="none")
    mixer(x, y)
    assert mixer.last.translation.abs().sum() == 0


def test_rearrangement_random_takes_one_uniform_translation_unscored():
    g = torch.Generator().manual_seed(0)
    draws = [
        functional.sample_sage_params(
            8, 16, 16, alpha=1.0, upper_lambda=0.6, rand_pos=0.05, generator=g, rearrangement="random"
        ).translations
        for _ in range(400)
    ]
    assert all(t.shape == (1, 2) for t in draws)
    shifts = torch.cat(draws)
    assert shifts.abs().max() <= 15 and shifts[:, 0].abs().max() >= 13  # the whole (2H-1)^2 range
    assert abs(float(shifts.float().mean())) < 1.5  # centred, no preference
    search = functional.sample_sage_params(
        8, 16, 16, alpha=1.0, upper_lambda=0.6, rand_pos=0.05, generator=torch.Generator().manual_seed(0)
    )
    assert search.translations.shape == (math.floor(31 * 31 * 0.05), 2)
    x, y = _batch()
    mixer = SageMixup(mode="sage", num_classes=10, model=_model(), seed=0, rearrangement="random")
    mixer(x, y)
    # every image of the batch takes the one drawn shift: nothing was searched per image
    assert (mixer.last.translation == mixer.last.translation[0]).all()


def test_cheap_saliency_runs_the_pass_at_the_scaled_size():
    model, (x, y) = _model(), _batch()
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    full = functional.saliency_map(model, x, y)
    half = functional.saliency_map(model, x, y, scale=0.5)
    assert seen == [(16, 16), (8, 8)]
    assert half.shape == full.shape == (8, 16, 16) and bool((half >= 0).all())
    # what it approximates: the low-resolution map, resized, correlates with the exact one
    cosine = F.cosine_similarity(half.flatten(1), full.flatten(1)).mean()
    assert float(cosine) > 0.8
    resized = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    small = functional.saliency_map(model, resized, y, blur_kernel=1)
    upsampled = F.interpolate(small[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(functional.saliency_map(model, x, y, scale=0.5, blur_kernel=1), upsampled)


def _running_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("update_ratio", [1.0, 0.7])
def test_cheap_saliency_leaves_batchnorm_running_statistics_alone(update_ratio):
    x, y = _batch()
    # exact pass (reference): the clean batch's forward in train mode moves the running statistics
    model = _model().train()
    before = _running_statistics(model)
    functional.saliency_map(model, x, y)
    after = _running_statistics(model)
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])
    assert int(after["1.num_batches_tracked"]) == 1
    # resized pass: the small images' statistics never reach them; the forward still used batch statistics
    model = _model().train()
    before = _running_statistics(model)
    half = functional.saliency_map(model, x, y, scale=0.5)
    for key, value in _running_statistics(model).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert bool((half > 0).any())
    # in the SAGE step, only the mixed batch's forward (the caller's) updates them
    model = _model().train()
    mixer = SageMixup(
        mode="sage", num_classes=10, model=model, seed=0, saliency_scale=0.5, update_ratio=update_ratio
    )
    mixed, _ = mixer(x, y)
    for key, value in _running_statistics(model).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    model(mixed)
    bn = model[1]
    with torch.no_grad():
        features = model[0](mixed)
    want = 0.9 * before["1.running_mean"] + 0.1 * features.mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean, want)


def test_the_docs_option_table_names_every_option_with_its_default():
    rows = [
        line
        for line in (Path(__file__).parents[1] / "docs" / "algorithm.md").read_text().splitlines()
        if line.startswith("| `")
    ]
    for info in option_infos():
        row = next((r for r in rows if f"`{info.name}`" in r.split("|")[1]), None)
        assert row is not None, f"docs/algorithm.md's option table lacks {info.name}"
        assert f"`sage_{info.name}`" in row
        default = info.default if info.kind is not str else f'"{info.default}"'
        assert str(default) in row, f"{info.name}: default {default} not in its row"


def test_an_empty_batch_is_a_clear_error():
    x, y = torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)
    mixer = SageMixup(mode="sage", num_classes=10, model=_model(), seed=0)
    with pytest.raises(ValueError, match="empty batch"):
        mixer(x, y)
    with pytest.raises(ValueError, match="empty batch"):
        train_step(_model(), x, y, criterion=SoftTargetCrossEntropy(), mixer=mixer)


class _TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _model()

    def forward(self, x):
        return self.inner(x), x.mean()


@pytest.mark.parametrize("lam", [1.5, -0.1, math.nan])
def test_error_list_of_the_promise(lam):
    x, y = _batch()
    with pytest.raises(TypeError, match="model must return a logits tensor"):
        SageMixup(mode="sage", num_classes=10, model=_TupleModel(), seed=0)(x, y)
    with pytest.raises(TypeError, match="model must return a logits tensor"):
        functional.saliency_pass(_TupleModel(), x, y)
    with pytest.raises(ValueError, match="lam must lie in"):
        functional.sage_target(y, perm=torch.arange(8), lam=torch.full((8,), lam), num_classes=10)
    with pytest.raises(ValueError, match="cutmix_minmax must have min < max"):
        SageMixup(mode="sage", num_classes=10, cutmix_minmax=(0.6, 0.4))


def test_saliency_mode_eval_uses_running_statistics_and_restores_train_mode():
    model, (x, y) = _model(), _batch()
    bn = model[1]
    bn.running_mean.fill_(0.3)
    before = bn.running_mean.clone()
    mixer = SageMixup(mode="sage", num_classes=10, model=model, seed=0, saliency_mode="eval")
    mixer(x, y)
    assert model.training  # the caller's mode is back
    assert torch.equal(bn.running_mean, before)  # eval mode: the pass did not update the statistics
    want = functional.saliency_map(model.eval(), x, y)
    torch.testing.assert_close(mixer.last.saliency, want)
    model.train()
    SageMixup(mode="sage", num_classes=10, model=model, seed=0)(x, y)  # train mode (the default) updates them
    assert not torch.equal(bn.running_mean, before)
