"""``timm-sage train``: config parsing, the SAGE step's gradient, an end-to-end run and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from test_data import make_image_folder
from timm.loss import SoftTargetCrossEntropy

import timm_sage.models  # noqa: F401
from timm_sage.functional import saliency_map
from timm_sage.mixup import SageMixup
from timm_sage.tools import cli
from timm_sage.train import command
from timm_sage.train.config import load_config, parse_overrides, resolve_config
from timm_sage.train.loop import train_step
from timm_sage.train.session import StopForTest, Trainer


# ------------------------------------------------------------------------------------------- config
def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match="batch_sise"):
        resolve_config({"batch_sise": 64})
    with pytest.raises(ValueError, match="sage_upper_lamda"):
        resolve_config({"mixup": 1.0, "mixup_mode": "sage", "sage_upper_lamda": 0.5})


def test_train_py_keys_at_default_pass_others_need_ignore_unsupported():
    cfg = resolve_config({"aa": None, "reprob": 0.0, "color_jitter": 0.4, "log_interval": 7, "pin_mem": True})
    assert cfg.batch_size == 128 and cfg.smoothing == 0.1 and cfg.sched == "cosine"  # train.py defaults
    with pytest.raises(ValueError, match="aa=.rand-m9") as error:
        resolve_config({"aa": "rand-m9", "reprob": 0.25})
    assert "reprob" in str(error.value) and "--ignore-unsupported" in str(error.value)
    with pytest.warns(UserWarning, match="reprob"):
        cfg = resolve_config({"aa": "rand-m9", "reprob": 0.25, "lr": 0.3}, ignore_unsupported=True)
    assert cfg.lr == 0.3 and "aa" not in cfg


def test_values_are_checked_and_converted():
    with pytest.raises(ValueError, match="batch_size"):
        resolve_config({"batch_size": "many"})
    with pytest.raises(ValueError, match="input_size"):
        resolve_config({"input_size": [28, 28]})
    with pytest.raises(ValueError, match="mixup must be > 0"):
        resolve_config({"mixup_mode": "sage"})
    with pytest.raises(ValueError, match="dataset_download"):
        resolve_config({"dataset_download": True})
    cfg = resolve_config({"decay_milestones": [100, 200], "amp": "true", "mean": 0.5})
    assert cfg.decay_milestones == [100, 200] and cfg.amp is True and cfg.mean == [0.5]


def test_command_line_overrides_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 100, "lr": 0.2, "model": "wrn16_8", "channels_last": True}))
    args = cli.build_parser("train").parse_args(
        ["train", "--config", str(path), "--batch-size", "64", "--input-size", "1", "28", "28",
         "--amp", "--lr=0.3", "--sage_upper_lambda", "0.5", "--no-aug", "--channels-last", "false",
         "--decay-milestones", "3", "6"]
    )  # fmt: skip
    cfg = command.config_from_args(args)
    assert cfg.batch_size == 64 and cfg.lr == 0.3 and cfg.model == "wrn16_8"
    assert cfg.input_size == [1, 28, 28] and cfg.amp is True and cfg.no_aug is True
    assert cfg.channels_last is False and cfg.sage_upper_lambda == 0.5 and cfg.decay_milestones == [3, 6]
    assert parse_overrides(["-b", "8", "--no-amp", "--min-lr", "-1e-3"]) == {
        "batch_size": "8",
        "amp": False,
        "min_lr": "-1e-3",
    }
    assert load_config(path, ["--epochs", "3"]).epochs == 3


# -------------------------------------------------------------------------------------- SAGE step
def _tiny_model(classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("preactresnet18_tiny", num_classes=classes, width=0.0625)


def _bce_clean(model, x, y, classes):
    return F.binary_cross_entropy(torch.softmax(model(x), -1), F.one_hot(y, classes).float())


@pytest.mark.parametrize("ratio", [0.7, 1.0])
def test_sage_step_gradient_is_weighted_clean_plus_mixed(ratio):
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 12, 12, generator=g), torch.randint(0, 4, (6,), generator=g)
    mixer = SageMixup(
        mixup_alpha=1.0, mode="sage", num_classes=4, label_smoothing=0.0, rand_pos=0.05, seed=2,
        update_ratio=ratio, model=model,
    )  # fmt: skip
    criterion = SoftTargetCrossEntropy()
    params = [p for p in model.parameters() if p.requires_grad]
    calls = []
    params[0].register_hook(lambda grad: calls.append(1))
    expected = saliency_map(model, x, y)
    model.zero_grad(set_to_none=True)
    result = train_step(model, x, y, criterion=criterion, mixer=mixer)
    got = [p.grad.clone() for p in params]
    assert result.method == "sage" and bool(mixer.last.mixed) and int(mixer.skipped_batches) == 0
    assert len(calls) == (1 if ratio == 1.0 else 2)  # r = 1: the clean pass computes no weight gradient
    # the mixer saw the clean pass's saliency (saliency_pass returns it scaled by param_grad_weight;
    # SAGE normalises every map by its sum, so only the shape matters)
    used = mixer.last.saliency
    torch.testing.assert_close(
        used / used.sum((1, 2), keepdim=True), expected / expected.sum((1, 2), keepdim=True)
    )
    assert not torch.equal(result.inputs, x) and result.target.shape == (6, 4)
    clean_grads = torch.autograd.grad(_bce_clean(model, x, y, 4), params)
    mixed_grads = torch.autograd.grad(criterion(model(result.inputs), result.target), params)
    for grad, clean, mixed in zip(got, clean_grads, mixed_grads, strict=True):
        torch.testing.assert_close(grad, (1 - ratio) * clean + ratio * mixed, rtol=1e-4, atol=1e-6)


class _NanInSaliencyPass(torch.nn.Module):
    """Returns NaN logits when its input requires grad (the saliency pass), normal logits otherwise."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits * math.nan if x.requires_grad else logits


@pytest.mark.parametrize("loss", ["bce_softmax", "cross_entropy"])
def test_non_finite_saliency_pass_trains_on_the_unmixed_batch(loss):
    """The one rule: no mix, no clean gradient, mixed-loss weight 1, the skip counted on the device."""
    model = _NanInSaliencyPass(_tiny_model())
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    mixer = SageMixup(
        mixup_alpha=1.0, mode="sage", num_classes=4, update_ratio=0.5, seed=0, model=model,
        saliency_loss=loss, label_smoothing=0.0,
    )  # fmt: skip
    criterion = SoftTargetCrossEntropy()
    result = train_step(model, x, y, criterion=criterion, mixer=mixer)
    assert not bool(mixer.last.mixed) and int(mixer.skipped_batches) == 1
    assert float(mixer.loss_weight) == 1.0
    assert torch.equal(result.inputs, x) and torch.equal(result.target, F.one_hot(y, 4).float())
    params = list(model.parameters())
    expected = torch.autograd.grad(criterion(model(x), F.one_hot(y, 4).float()), params)
    for param, want in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, want)  # the plain batch's gradient, nothing else


# ------------------------------------------------------------------------------ end to end, resume
def _tiny_config(tmp_path) -> dict:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=8, size=12, test_per_class=2)
    return {
        "data_dir": str(data), "model": "preactresnet18_tiny", "model_kwargs": {"width": 0.0625},
        "epochs": 2, "batch_size": 8, "opt": "sgd", "lr": 0.05, "weight_decay": 1e-4, "sched": "multistep",
        "decay_milestones": [1], "warmup_epochs": 0, "mixup": 1.0, "mixup_mode": "sage", "smoothing": 0.0,
        "sage_upper_lambda": 0.6, "sage_update_ratio": 0.7, "sage_rand_pos": 0.02, "model_ema": True,
        "model_ema_decay": 0.9, "seed": 3, "workers": 0, "output": str(tmp_path / "out"),
    }  # fmt: skip


def test_end_to_end_outputs_and_exact_resume_after_a_kill(tmp_path):
    config = _tiny_config(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(path), "--experiment", "full", "--no-progress"]) == 0
    full = tmp_path / "out" / "full"
    for name in ("args.yaml", "metrics.csv", "metrics.jsonl", "summary.json", "last.pth.tar"):
        assert (full / name).is_file(), name
    for name in ("mixed_batch.png", "curves.png"):
        assert (full / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {
        "train_loss",
        "test_loss",
        "test_top1",
        "test_top5",
        "lr",
        "epoch_time",
        "skipped_sage_batches",
    } <= set(rows[0])
    assert rows[0]["lr"] == pytest.approx(0.05) and rows[1]["lr"] == pytest.approx(0.005)  # x0.1 after 1
    assert len((full / "metrics.csv").read_text().splitlines()) == 3
    summary = json.loads((full / "summary.json").read_text())
    assert summary["final_top1"] == rows[-1]["test_top1"] and summary["epochs"] == 2
    assert summary["best_top1"] == max(r["test_top1"] for r in rows)
    args = yaml.safe_load((full / "args.yaml").read_text())
    assert args["mixup_mode"] == "sage" and args["input_size"] == [3, 12, 12] and args["num_classes"] == 3
    assert load_config(full / "args.yaml").sage_update_ratio == 0.7  # args.yaml is itself a valid config

    # kill in the middle of epoch 2 (3 steps per epoch), then resume from the epoch-1 checkpoint
    killed = Trainer(load_config(None, {**config, "experiment": "killed"}), progress=False)
    with pytest.raises(StopForTest):
        killed.fit(stop_after_steps=4)
    checkpoint = tmp_path / "out" / "killed" / "last.pth.tar"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    resumed = Trainer(load_config(None, {**config, "resume": str(checkpoint)}), progress=False)
    assert resumed.output_dir == checkpoint.parent and resumed.start_epoch == 1
    resumed_summary = resumed.fit()
    reference = torch.load(full / "last.pth.tar", weights_only=True)
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in reference["ema"].items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    assert resumed_summary["final_top1"] == summary["final_top1"]
    resumed_rows = [
        json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["test_loss"] for r in resumed_rows] == [r["test_loss"] for r in rows]


def test_shipped_configs_resolve_and_cifar_ones_use_train_py_keys_only():
    from pathlib import Path

    from timm_sage.config import SAGE_RETIRED_PRESETS
    from timm_sage.train.config import SUPPORTED
    from timm_sage.train.configs import study_configs

    folder = Path(__file__).resolve().parents[1] / "train_configs"
    recipes = sorted(folder.glob("*.yaml"))
    assert len(recipes) == 16 + 1  # the paper's CIFAR recipes and the main job
    studies = study_configs()  # 10k study, data-scarce study, scenes study (version 1), scenes-2 study, ...
    counts = {"fmnist10k": 4, "scarce": 17, "scenes": 14, "scenes2": 9, "scenes3": 10}
    assert counts.items() <= {name: len(configs) for name, configs in studies.items()}.items()
    paths = recipes + [path for configs in studies.values() for path in configs.values()]
    for path in paths:
        cfg = load_config(path)
        raw = yaml.safe_load(path.read_text())
        assert set(raw) <= set(SUPPORTED), path.name
        assert raw.get("sage_preset") not in SAGE_RETIRED_PRESETS, path.name  # a shipped config never warns
        if path.name.startswith("cifar"):
            assert "train_subset" not in raw and cfg.epochs == 300 and cfg.batch_size == 100, path.name
            assert cfg.lr == 0.2 and cfg.decay_milestones == [100, 200] and cfg.smoothing == 0.0
            assert (cfg.mixup_mode == "sage") == path.name.endswith("_sage.yaml")
    sage = load_config(folder / "cifar100_wrn16_8_sage.yaml")
    assert (sage.sage_upper_lambda, sage.sage_update_ratio) == (0.7, 0.5)


# ---------------------------------------------------------------------- checkpoints timm can read
def test_last_checkpoint_loads_in_timm_under_weights_only(tmp_path):
    config = {**_tiny_config(tmp_path), "epochs": 1, "experiment": "run"}
    trainer = Trainer(load_config(None, config), progress=False)
    trainer.fit()
    path = tmp_path / "out" / "run" / "last.pth.tar"
    state = torch.load(path, map_location="cpu", weights_only=True)  # torch's safe loader accepts it
    assert state["epoch"] == 1 and state["arch"] == "preactresnet18_tiny"
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert state["mixer_rng"]["generator"].dtype == torch.uint8 and state["ema"] is not None
    assert state["mixer_rng"]["host"]["bit_generator"] == "PCG64"  # plain ints and strings

    model = timm.create_model("preactresnet18_tiny", num_classes=3, width=0.0625)
    timm.models.load_checkpoint(model, str(path))  # timm's loader, weights_only=True by default
    created = timm.create_model("preactresnet18_tiny", num_classes=3, width=0.0625, checkpoint_path=str(path))
    for loaded in (model, created):
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, state["model"][key]), key


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from timm_sage.train import outputs
    from timm_sage.train.session import _rng_state, _set_rng_state

    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    outputs.save_checkpoint(tmp_path / "c.pth.tar", {"epoch": 0, "model": {}, "rng": _rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    _set_rng_state(outputs.load_checkpoint(tmp_path / "c.pth.tar")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
    # a checkpoint of an older version (numpy's own state tuple) still resumes
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"epoch": 0, "model": {}, "rng": old}, tmp_path / "old.pth.tar")
    expected = (random.random(), np.random.standard_normal())
    _set_rng_state(outputs.load_checkpoint(tmp_path / "old.pth.tar")["rng"])
    assert (random.random(), np.random.standard_normal()) == expected


def test_torchcompile_trains_compiled_with_a_compiled_saliency_pass_and_matches_eager(tmp_path):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    from timm_sage.train import session as _session

    summaries, counter = {}, CompileCounterWithBackend("aot_eager")
    real_compile = torch.compile

    def compile_with_counter(model, backend=None, **kwargs):  # the config names aot_eager; count its graphs
        assert backend == "aot_eager"
        return real_compile(model, backend=counter, **kwargs)

    for compiled in (False, True):
        torch._dynamo.reset()
        config = {**_tiny_config(tmp_path), "epochs": 1, "model_ema": False, "experiment": f"c{compiled}"}
        if compiled:
            config["torchcompile"] = "aot_eager"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_session.torch, "compile", compile_with_counter)
            trainer = Trainer(load_config(None, config), progress=False)
            if compiled:
                assert trainer.forward_model is not trainer.model and trainer.mixer.model is trainer.model
                # the pass compiles the plain module with the forward's settings, in a cache of its own
                assert trainer.mixer.saliency_module._orig_mod is trainer.model
                assert trainer.mixer.saliency_module.dynamo_ctx is trainer.forward_model.dynamo_ctx
            summaries[compiled] = trainer.fit()
    # training forward, saliency forward (input requires grad), evaluation (no grad, eval mode): 3 graphs
    # over the epoch's steps, each compiled once
    assert 2 <= counter.frame_count <= 4
    assert summaries[True]["final_top1"] == pytest.approx(summaries[False]["final_top1"], abs=1e-6)
    torch._dynamo.reset()
