"""A training run of ``timm-sage train``: builds everything from a config, trains, checkpoints, resumes.

Built from timm's own pieces: ``create_model``, ``create_optimizer_v2`` (``optimizer_kwargs``),
``create_scheduler_v2`` (``scheduler_kwargs``), ``SoftTargetCrossEntropy``, ``ModelEmaV3``; mixing is
:class:`timm_sage.SageMixup` (timm's code for the non-SAGE modes).

Determinism: ``seed`` seeds python, numpy and torch before the model is built; the loader reseeds its
shuffle and augmentation from ``(seed, epoch)``; the mixer has its own generator (``sage_seed`` or
``seed``). A checkpoint at the start and at each epoch end holds every state (model, optimizer,
scheduler, EMA, AMP scaler, mixer generator, python/numpy/torch RNG), so a run killed anywhere and resumed
from its last checkpoint ends with the same weights as one never interrupted (on the same device and
thread count). It holds tensors, numbers, strings, lists and dicts only: timm's ``load_checkpoint`` and
``create_model(checkpoint_path=...)`` read its ``model`` weights under ``weights_only=True``. A resumed run
continues in the checkpoint's folder; Ctrl-C raises :class:`TrainingInterrupted` naming the checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from timm_sage.train import outputs
from timm_sage.train.config import TrainConfig
from timm_sage.train.data import BatchLoader, load_datasets
from timm_sage.train.loop import evaluate, hard_labels, predict, train_step
from timm_sage.train.resume import checkpoint_path

__all__ = ["STOP_ENV", "StopForTest", "Trainer", "TrainingInterrupted"]

STOP_ENV = "TIMM_SAGE_STOP_AFTER_STEPS"  # test hook: raise StopForTest after this many optimizer steps


class StopForTest(RuntimeError):
    """Raised by the test hook to simulate a run killed in the middle of an epoch."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`Trainer.fit`: ``checkpoint`` holds the state after ``epochs_saved`` epochs
    (0: the start of training); ``epoch`` is the 1-based epoch that was running (its steps are lost)."""

    def __init__(self, checkpoint: Path, epochs_saved: int, epoch: int, num_epochs: int) -> None:
        super().__init__(f"interrupted in epoch {epoch}/{num_epochs}; {checkpoint} holds {epochs_saved}")
        self.checkpoint, self.epochs_saved, self.epoch, self.num_epochs = (
            checkpoint, epochs_saved, epoch, num_epochs,
        )  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """python, numpy and torch RNG states as ints, lists and tensors only: a checkpoint holding them loads
    with ``torch.load(weights_only=True)`` (timm's ``load_checkpoint``, ``create_model(checkpoint_path=)``).
    """
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": [int(w) for w in words], "gauss_next": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 values, int64 for torch
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    else:  # older checkpoints: the tuples themselves
        random.setstate(python)
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"].numpy(), dtype=np.uint32)
        np.random.set_state(
            (
                numpy_state["kind"],
                keys,
                int(numpy_state["pos"]),
                int(numpy_state["has_gauss"]),
                float(numpy_state["cached_gaussian"]),
            )
        )
    else:
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Everything of one run, built from a resolved :class:`TrainConfig`.

    Args:
        cfg: from :func:`timm_sage.train.config.load_config`.
        progress: show tqdm bars and per-epoch lines.
    """

    def __init__(self, cfg: TrainConfig, *, progress: bool = True) -> None:
        from timm import create_model
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2, optimizer_kwargs
        from timm.scheduler import create_scheduler_v2, scheduler_kwargs

        import timm_sage.models  # noqa: F401  (registers the CIFAR networks)
        from timm_sage.mixup import SageMixup

        self.cfg = cfg
        self.progress = progress
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        seed_everything(cfg.seed)
        self.train_data, self.val_data, self.test_data, info = load_datasets(cfg)
        self.extra_tests = info["extra_tests"]
        cfg.input_size, cfg.mean, cfg.std = info["input_size"], info["mean"], info["std"]
        if cfg.data_dir is None and info["name"] == "fashion_mnist":
            from timm_sage.train.data import FASHION_MNIST_DIR

            cfg.data_dir = str(FASHION_MNIST_DIR)
        labels_needed = int(max(self.train_data.labels.max(), self.test_data.labels.max())) + 1
        if cfg.num_classes is None:
            cfg.num_classes = max(labels_needed, len(self.train_data.classes))
        elif cfg.num_classes < labels_needed:
            raise ValueError(
                f"num_classes={cfg.num_classes} but the dataset has labels up to {labels_needed - 1}"
            )
        self.model: nn.Module = create_model(
            cfg.model,
            pretrained=cfg.pretrained,
            in_chans=cfg.input_size[0],
            num_classes=cfg.num_classes,
            drop_rate=cfg.drop,
            drop_path_rate=cfg.drop_path,
            drop_block_rate=cfg.drop_block,
            global_pool=cfg.gp,
            bn_momentum=cfg.bn_momentum,
            bn_eps=cfg.bn_eps,
            checkpoint_path=cfg.initial_checkpoint or None,
            **cfg.model_kwargs,
        )
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.param_count = sum(p.numel() for p in self.model.parameters())
        # torchcompile (train.py's --torchcompile): the training and evaluation forwards run compiled, and
        # SAGE's saliency pass follows (saliency_compile "follow"); checkpoints hold the plain weights.
        self.forward_model: nn.Module = self.model
        if cfg.torchcompile:
            options = {"backend": cfg.torchcompile}
            if cfg.torchcompile_mode:
                options["mode"] = cfg.torchcompile_mode
            self.forward_model = torch.compile(self.model, **options)
        if cfg.lr is None:  # train.py's rule: lr = lr_base * global batch / lr_base_size
            ratio = cfg.batch_size / cfg.lr_base_size
            adaptive = any(name in cfg.opt.lower() for name in ("ada", "lamb"))
            scale = cfg.lr_base_scale or ("sqrt" if adaptive else "linear")
            cfg.lr = cfg.lr_base * (ratio**0.5 if scale == "sqrt" else ratio)
        self.optimizer = create_optimizer_v2(self.model, **optimizer_kwargs(cfg=cfg), **cfg.opt_kwargs)
        amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.autocast = (
            functools.partial(torch.autocast, device_type=self.device.type, dtype=amp_dtype)
            if cfg.amp
            else contextlib.nullcontext
        )
        fp16_cuda = cfg.amp and self.device.type == "cuda" and amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if fp16_cuda else None
        self.train_loader = BatchLoader(
            self.train_data, cfg.batch_size, cfg.mean, cfg.std, train=True, seed=cfg.seed,
            hflip=cfg.hflip, augment=not cfg.no_aug, device=self.device,
        )  # fmt: skip
        self.test_loader = BatchLoader(
            self.test_data, cfg.validation_batch_size or max(cfg.batch_size, 256), cfg.mean, cfg.std,
            train=False, device=self.device,
        )  # fmt: skip
        self.val_loader = (
            BatchLoader(
                self.val_data, self.test_loader.batch_size, cfg.mean, cfg.std, train=False, device=self.device
            )
            if self.val_data is not None
            else None
        )
        self.scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, **scheduler_kwargs(cfg), updates_per_epoch=len(self.train_loader)
        )
        self.ema = None
        if cfg.model_ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup)
        self.mixer = None
        if cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None:
            from timm_sage.config import SageConfig

            self.mixer = SageMixup(
                mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                label_smoothing=cfg.smoothing, num_classes=cfg.num_classes,
                config=SageConfig(**{name: cfg[f"sage_{name}"] for name in SageConfig.names()}),
                seed=cfg.sage_seed if cfg.sage_seed is not None else cfg.seed,
                model=self.forward_model, amp_dtype=amp_dtype if cfg.amp else None, ema_model=self.ema,
            )  # fmt: skip
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.output_dir = self._output_dir()
        self.rows: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.num_updates = 0
        self.elapsed_before = 0.0
        if cfg.resume:
            self._restore(outputs.load_checkpoint(checkpoint_path(cfg.resume)))

    # ------------------------------------------------------------------------------------ set-up
    def _output_dir(self) -> Path:
        cfg = self.cfg
        if cfg.resume:  # continue in the run's own folder, whatever output/experiment and the cwd say
            return checkpoint_path(cfg.resume).parent
        name = cfg.experiment or "-".join(
            [datetime.now().strftime("%Y%m%d-%H%M%S"), cfg.model.replace("/", "_"), str(cfg.input_size[-1])]
        )
        # a folder that holds an earlier run is never reused: NAME-1, NAME-2, ... (--resume continues one)
        return outputs.fresh_run_folder(Path(cfg.output or os.path.join("output", "train")) / name)

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,  # epochs completed = the next epoch to run
            "arch": self.cfg.model,
            "args": dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "mixer_rng": self.mixer.rng_state() if self.mixer is not None else None,
            "mixer_skipped": int(self.mixer.skipped_batches) if self.mixer is not None else 0,
            "rng": _rng_state(),
            "loader": {"epoch": epoch, "position": 0, "seed": self.cfg.seed},
            "num_updates": self.num_updates,
            "metrics": list(self.rows),
            "elapsed": self.elapsed_before + (time.perf_counter() - self._started),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # With a new epoch count (the one key a resume may change) the schedule is rebuilt for the new
        # length rather than restored; otherwise its state is restored exactly.
        same_length = int(state.get("args", {}).get("epochs", self.cfg.epochs)) == self.cfg.epochs
        if self.scheduler is not None and state.get("scheduler") is not None and same_length:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.mixer is not None and state.get("mixer_rng") is not None:
            self.mixer.set_rng_state(state["mixer_rng"])
            self.mixer.skipped_batches = int(state.get("mixer_skipped", 0))
        _set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.num_updates = int(state.get("num_updates", 0))
        self.rows = list(state.get("metrics", []))
        self.elapsed_before = float(state.get("elapsed", 0.0))
        if self.scheduler is not None and self.start_epoch > 0:
            self.scheduler.step(self.start_epoch)

    # ---------------------------------------------------------------------------------- training
    def fit(self, *, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end; returns the summary (also in ``summary.json``)."""
        if stop_after_steps is None and os.environ.get(STOP_ENV):
            stop_after_steps = int(os.environ[STOP_ENV])
        self._started = time.perf_counter()
        folder = self.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        outputs.write_args(folder, self.cfg)
        self._epochs_saved = self.start_epoch
        if self.start_epoch == 0:  # a Ctrl-C in the first epoch can resume from here
            self._save_checkpoint(0)
        self._epoch = self.start_epoch
        try:
            return self._fit(stop_after_steps)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                folder / "last.pth.tar", self._epochs_saved, self._epoch + 1, self.num_epochs
            ) from None

    def _fit(self, stop_after_steps: int | None) -> dict[str, Any]:
        steps_this_run = 0
        for epoch in range(self.start_epoch, self.num_epochs):
            self._epoch = epoch
            if self.mixer is not None:
                self.mixer.mixup_enabled = self.mixing_on(epoch)
            skipped_before = int(self.mixer.skipped_batches) if self.mixer is not None else 0
            epoch_start = time.perf_counter()
            train_stats, steps_this_run = self._train_epoch(epoch, steps_this_run, stop_after_steps)
            epoch_time = time.perf_counter() - epoch_start
            skipped = train_stats.pop("_skipped") - skipped_before
            if skipped:
                warnings.warn(
                    f"epoch {epoch + 1}: {skipped} batch(es) had a non-finite saliency pass and trained "
                    "unmixed (SAGE's fallback)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            # eval_interval: evaluate every N epochs and always after the last one (the pass can cost more
            # than a training epoch on a small subset). With a validation split (val_size) the periodic
            # evaluations read it and the test set is read once, after the last epoch.
            last = epoch + 1 == self.num_epochs
            evaluated = (epoch + 1) % self.cfg.eval_interval == 0 or last
            val = (
                self._evaluate(self.forward_model, self.val_loader) if evaluated and self.val_loader else None
            )
            tested = last if self.val_loader is not None else evaluated
            test = self._evaluate(self.forward_model, self.test_loader) if tested else None
            ema_test = (
                self._evaluate(self.ema.module, self.test_loader) if tested and self.ema is not None else None
            )
            row = {
                "epoch": epoch + 1,
                **train_stats,
                "val_top1": round(val["test_top1"], 4) if val else None,
                "test_loss": round(test["test_loss"], 6) if test else None,
                "test_top1": round(test["test_top1"], 4) if test else None,
                "test_top5": round(test["test_top5"], 4) if test else None,
                "ema_test_top1": round(ema_test["test_top1"], 4) if ema_test else None,
                "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_time": round(epoch_time, 3),
                "eval_time": round(
                    (test["eval_time"] if test else 0.0) + (val["eval_time"] if val else 0.0), 3
                ),
                "skipped_sage_batches": skipped,
                "mixing": None if self.mixer is None else bool(self.mixer.mixup_enabled),
            }
            if self.scheduler is not None:
                # plateau schedulers read the validation metric where there is one; None between evaluations
                self.scheduler.step(epoch + 1, row["val_top1"] if self.val_loader else row["test_top1"])
            self.rows.append(row)
            self._after_epoch(epoch + 1)
        return self._finish()

    def mixing_on(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) mixes: from ``mixup_on_epoch`` until ``mixup_off_epoch``, and
        with ``mixup_on_train_top1`` only after a finished epoch's training top-1 reached it. That epoch
        trained unmixed, so its top-1 is on clean images; the rows come back with a resumed run, so a
        resumed run decides as the uninterrupted one did."""
        cfg = self.cfg
        if epoch < cfg.mixup_on_epoch or (cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch):
            return False
        threshold = cfg.mixup_on_train_top1
        return not threshold or any(row["train_top1"] >= threshold for row in self.rows[:epoch])

    def _evaluate(self, model: nn.Module, loader: BatchLoader) -> dict[str, float]:
        return evaluate(model, loader.batches(), autocast=self.autocast, channels_last=self.cfg.channels_last)

    def _train_epoch(self, epoch: int, steps: int, stop_after: int | None) -> tuple[dict[str, Any], int]:
        self.model.train()
        # Running sums stay on the device; the progress bar reads them every few batches only.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, count = 0, 0
        start = time.perf_counter()
        bar = tqdm(
            total=len(self.train_loader), desc=f"epoch {epoch + 1}/{self.num_epochs}", unit="batch",
            disable=not self.progress, mininterval=1.0, dynamic_ncols=True,
        )  # fmt: skip
        with bar:
            for index, (x, y) in enumerate(self.train_loader.batches(epoch)):
                result = self.train_one_step(x, y)
                if epoch == 0 and index == 0 and self.mixer is not None:
                    self._write_grid(result)
                loss_sum += result.loss.float()
                count += 1
                correct += (result.logits.argmax(1) == hard_labels(result.target)).sum()
                seen += y.shape[0]
                steps += 1
                bar.update(1)
                if self.progress and index % 10 == 0:
                    bar.set_postfix(
                        loss=f"{float(loss_sum) / count:.3f}", acc=f"{100 * int(correct) / seen:.1f}",
                        img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False,
                    )  # fmt: skip
                if stop_after is not None and steps >= stop_after:
                    raise StopForTest(f"stopped after {steps} steps ({STOP_ENV})")
        elapsed = time.perf_counter() - start
        stats = {
            "train_loss": round(float(loss_sum) / max(count, 1), 6),
            "train_top1": round(100 * int(correct) / max(seen, 1), 4),
            "img_per_s": round(seen / max(elapsed, 1e-9), 1),
            "_skipped": int(self.mixer.skipped_batches) if self.mixer is not None else 0,
        }
        return stats, steps

    def train_one_step(self, x: torch.Tensor, y: torch.Tensor):
        """One training step on the batch ``(x, y)``: zero the gradients, mix, forward, backward, the
        optimizer step (and EMA, scheduler updates); returns :func:`train_step`'s result."""
        self.optimizer.zero_grad(set_to_none=True)
        result = train_step(
            self.forward_model, x, y, criterion=self.criterion, mixer=self.mixer, autocast=self.autocast,
            scaler=self.scaler, channels_last=self.cfg.channels_last,
        )  # fmt: skip
        self._optimizer_step()
        return result

    def _optimizer_step(self) -> None:
        from timm.utils import dispatch_clip_grad

        cfg = self.cfg
        if self.scaler is not None:
            if cfg.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                dispatch_clip_grad(self.model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if cfg.clip_grad is not None:
                dispatch_clip_grad(self.model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
            self.optimizer.step()
        self.num_updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.num_updates)

    # ----------------------------------------------------------------------------------- outputs
    def _write_grid(self, result) -> None:
        target = result.target
        if target.ndim == 1:
            target = torch.nn.functional.one_hot(target, self.cfg.num_classes).float()
        outputs.write_mixed_grid(
            self.output_dir / "mixed_batch.png", result.inputs, target, self.cfg.mean, self.cfg.std,
            self.train_data.classes, f"first batch, {self.cfg.mixup_mode} ({result.method})",
        )  # fmt: skip

    def _after_epoch(self, epochs_done: int) -> None:
        folder = self.output_dir
        outputs.write_metrics(folder, self.rows)
        row = self.rows[-1]
        if self.progress:
            ema = f" ema_top1 {row['ema_test_top1']:.2f}" if row["ema_test_top1"] is not None else ""
            test = (
                f"test_loss {row['test_loss']:.4f} test_top1 {row['test_top1']:.2f} "
                f"top5 {row['test_top5']:.2f}"
                if row["test_top1"] is not None
                else "(no test this epoch)"
            )
            if row.get("val_top1") is not None:
                test = f"val_top1 {row['val_top1']:.2f} {test}"
            tqdm.write(
                f"epoch {row['epoch']}/{self.num_epochs}: train_loss {row['train_loss']:.4f} {test}{ema} "
                f"lr {row['lr']:.4g} ({row['epoch_time']:.1f}s + eval {row['eval_time']:.1f}s, "
                f"{row['img_per_s']:.0f} img/s)"
            )
        title = f"{self.cfg.model} on {self.cfg.dataset or 'folder'}"
        outputs.write_curves(folder / "curves.png", self.rows, title)
        self._save_checkpoint(epochs_done)

    def _save_checkpoint(self, epochs_done: int) -> None:
        outputs.save_checkpoint(self.output_dir / "last.pth.tar", self._state(epochs_done))
        self._epochs_saved = epochs_done

    def _loader(self, data) -> BatchLoader:
        """An evaluation loader (in order, no augmentation) over ``data``."""
        return BatchLoader(
            data, self.test_loader.batch_size, self.cfg.mean, self.cfg.std, train=False, device=self.device
        )

    def _per_photo_top1(self, data) -> dict[str, float]:
        """The final weights' top-1 (%) on ``data``'s images of each background photograph (its name ->
        accuracy), after the last epoch: how much of the test score one photograph moves."""
        predicted, labels = predict(
            self.forward_model, self._loader(data).batches(), autocast=self.autocast,
            channels_last=self.cfg.channels_last,
        )  # fmt: skip
        hits = (predicted == labels).float()
        names = data.photo_names or []
        return {
            names[int(index)]: round(100.0 * float(hits[data.photos == index].mean()), 2)
            for index in data.photos.unique()
        }

    def _finish(self) -> dict[str, Any]:
        rows = self.rows
        tested = [r for r in rows if r["test_top1"] is not None]
        best = max(tested, key=lambda r: r["test_top1"]) if tested else None
        train_eval = None
        if self.cfg.eval_train:
            # The final weights on the un-augmented training images, eval mode: the regime (how far the
            # model fits its training set) that the running, augmented and mixed train_top1 cannot show.
            loader = BatchLoader(
                self.train_data, self.test_loader.batch_size, self.cfg.mean, self.cfg.std, train=False,
                device=self.device,
            )  # fmt: skip
            train_eval = self._evaluate(self.forward_model, loader)
        validated = [r for r in rows if r.get("val_top1") is not None]
        best_val = max(validated, key=lambda r: r["val_top1"]) if validated else None
        photos = self.test_data.photos is not None
        by_photo = self._per_photo_top1(self.test_data) if rows and photos else None
        extra_tests = {
            f"{name}_top1": round(self._evaluate(self.forward_model, self._loader(data))["test_top1"], 4)
            for name, data in (self.extra_tests.items() if rows else ())
        }
        summary = {
            "final_top1": rows[-1]["test_top1"] if rows else None,
            "final_val_top1": rows[-1].get("val_top1") if rows else None,
            "best_val_top1": best_val["val_top1"] if best_val else None,
            "best_val_epoch": best_val["epoch"] if best_val else None,
            "final_top5": rows[-1]["test_top5"] if rows else None,
            "best_top1": best["test_top1"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "final_ema_top1": rows[-1]["ema_test_top1"] if rows else None,
            "final_train_top1": round(train_eval["test_top1"], 4) if train_eval else None,
            **extra_tests,
            "test_top1_by_photo": by_photo,
            "train_time_s": round(sum(r["epoch_time"] for r in rows), 2),
            "epochs": len(rows),
            "wall_time_s": round(self.elapsed_before + (time.perf_counter() - self._started), 2),
            "model": self.cfg.model,
            "param_count": self.param_count,
            "num_classes": self.cfg.num_classes,
            "dataset": self.cfg.dataset,
            "train_images": len(self.train_data),
            "test_images": len(self.test_data),
            "val_images": len(self.val_data) if self.val_data is not None else 0,
            "mixup_mode": self.cfg.mixup_mode if self.mixer is not None else "off",
            "skipped_sage_batches": sum(r.get("skipped_sage_batches", 0) for r in rows),
            "output_dir": str(self.output_dir),
        }
        outputs.write_summary(self.output_dir, summary)
        return summary
