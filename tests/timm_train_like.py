#!/usr/bin/env python3
"""A small training script that follows timm ``train.py``'s call pattern, for the plugin/launcher tests.

CI cannot hold timm's ``train.py`` (the wheel does not ship it), so this script copies the parts of its
*shape* that ``timm_sage.plugin`` relies on, with the same names:

* module-level ``config_parser`` (``-c/--config`` only) and ``parser``; the YAML goes through
  ``parser.set_defaults(**cfg)`` so unknown keys (``sage_*``) land on ``args``;
* ``--device-modules`` imported right after parsing, in ``main()``, where ``args`` is a local;
* ``Mixup``, ``FastCollateMixup``, ``create_loader``, ``ClassificationTask``, ``create_optimizer_v2`` and
  ``NativeScaler`` looked up as module globals at call time;
* the prefetcher path (``FastCollateMixup`` as ``collate_fn`` of ``create_loader(use_prefetcher=True)``)
  and the ``--no-prefetcher`` path (``mixup_fn(input, target)`` after ``.to(device)``, before
  channels_last and before ``amp_autocast()``); ``SoftTargetCrossEntropy`` when mixing is active;
* ``--mixup-off-epoch`` as train.py does it (``loader.mixup_enabled = False`` or
  ``mixup_fn.mixup_enabled = False``); ``optimizer.zero_grad()`` before the loop and after each step.

Data: a generated in-memory image set (PIL RGB, class-dependent bright square plus noise). It runs on
the CPU. Every step is recorded in ``HISTORY`` and the run's objects in ``RUN``, for the tests.

``--model-ema`` (and ``--model-ema-decay``) as train.py: ``task.setup_ema`` then ``task.update_ema`` after
each optimizer step. Test-only flags (not in train.py): ``--num-samples``, ``--no-task`` (older train.py: no
ClassificationTask, the model is called directly), ``--loss-scaler`` (a NativeScaler on the CPU, which
train.py only builds on CUDA with float16), ``--device`` (cpu; cuda in .ci/gpu_check.sh).
"""

import argparse
import importlib
import json
import logging
import os
from contextlib import suppress
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import yaml
from PIL import Image
from timm.data import FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask
from timm.utils import NativeScaler, random_seed, unwrap_model

_logger = logging.getLogger("train")

HISTORY: list = []
RUN: dict = {}

config_parser = parser = argparse.ArgumentParser(description="Training Config", add_help=False)
parser.add_argument("-c", "--config", default="", type=str, metavar="FILE", help="YAML config file")

parser = argparse.ArgumentParser(description="timm train.py-like test script")
parser.add_argument("--model", default="test_resnet", type=str)
parser.add_argument("--num-classes", default=4, type=int)
parser.add_argument("--img-size", default=16, type=int)
parser.add_argument("-b", "--batch-size", default=8, type=int)
parser.add_argument("--num-samples", default=32, type=int)
parser.add_argument("--epochs", default=1, type=int)
parser.add_argument("--lr", default=0.05, type=float)
parser.add_argument("--seed", default=42, type=int)
parser.add_argument("-j", "--workers", default=0, type=int)
parser.add_argument("--no-aug", action="store_true", default=False)
parser.add_argument("--channels-last", action="store_true", default=False)
parser.add_argument("--torchcompile", nargs="?", type=str, default=None, const="inductor")
parser.add_argument("--amp", action="store_true", default=False)
parser.add_argument("--amp-dtype", default="float16", type=str)
parser.add_argument("--amp-impl", default="native", type=str)
parser.add_argument("--no-prefetcher", action="store_true", default=False)
parser.add_argument("--device-modules", default=None, type=str, nargs="+")
parser.add_argument("--mixup", type=float, default=0.0)
parser.add_argument("--cutmix", type=float, default=0.0)
parser.add_argument("--cutmix-minmax", type=float, nargs="+", default=None)
parser.add_argument("--mixup-prob", type=float, default=1.0)
parser.add_argument("--mixup-switch-prob", type=float, default=0.5)
parser.add_argument("--mixup-mode", type=str, default="batch")
parser.add_argument("--mixup-off-epoch", default=0, type=int)
parser.add_argument("--smoothing", type=float, default=0.1)
parser.add_argument("--no-task", action="store_true", default=False)
parser.add_argument("--model-ema", action="store_true", default=False)
parser.add_argument("--model-ema-decay", type=float, default=0.9998)
parser.add_argument("--loss-scaler", action="store_true", default=False)
parser.add_argument("--device", default="cpu", type=str, help="cpu, or cuda in .ci/gpu_check.sh")
parser.add_argument(
    "--record", default="", type=str, help="test only: write each rank's run to RECORD.rankN.json"
)


class SquaresDataset(torch.utils.data.Dataset):
    """``num`` RGB images (PIL) of ``size`` x ``size``: a bright square whose corner encodes the class."""

    def __init__(self, num: int, size: int, num_classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, num_classes, num)
        images = rng.integers(0, 80, (num, size, size, 3), dtype=np.uint8)
        half = size // 2
        for i, label in enumerate(self.labels):
            top, left = (label // 2 % 2) * half, (label % 2) * half
            images[i, top : top + half, left : left + half] = 200 + 10 * (label // 4)
        self.images = images
        self.transform = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def _parse_args():
    args_config, remaining = config_parser.parse_known_args()
    if args_config.config:
        with open(args_config.config) as f:
            cfg = yaml.safe_load(f)
            parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    args_text = yaml.safe_dump(args.__dict__, default_flow_style=False)
    return args, args_text


def main():
    args, args_text = _parse_args()

    if args.device_modules:
        for module in args.device_modules:
            importlib.import_module(module)

    args.prefetcher = not args.no_prefetcher
    # As train.py: torchrun sets WORLD_SIZE/RANK; the process group (gloo on the CPU) then the seeds
    # seed + rank, so each rank draws its own stream.
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args.distributed = args.world_size > 1
    args.rank = 0
    if args.distributed:
        torch.distributed.init_process_group("gloo")
        args.rank = torch.distributed.get_rank()
    device = torch.device(args.device)
    random_seed(args.seed, args.rank)

    use_amp = "native" if args.amp else None
    amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16

    model = create_model(args.model, num_classes=args.num_classes, pretrained=False)
    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config(dict(input_size=(3, args.img_size, args.img_size)), model=model)

    mixup_active = args.mixup > 0 or args.cutmix > 0.0 or args.cutmix_minmax is not None
    if mixup_active:
        train_loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()

    if args.no_task:
        task = None
    else:
        task = ClassificationTask(model, criterion=train_loss_fn, device=device, verbose=False)
        # As train.py: --model-ema sets the EMA up inside the task, before DDP.
        if args.model_ema:
            task.setup_ema(decay=args.model_ema_decay)
        model = task.get_trainable_module()
    optimizer = create_optimizer_v2(model, opt="sgd", lr=args.lr, momentum=0.9, weight_decay=0.0)

    amp_autocast = suppress
    loss_scaler = None
    if use_amp == "native":
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
    if args.loss_scaler:
        loss_scaler = NativeScaler(device=device.type)

    if args.distributed:
        if task is not None:
            task.prepare_distributed()
            model = task.get_trainable_module()
        else:
            model = torch.nn.parallel.DistributedDataParallel(model)

    if args.torchcompile:
        if task is not None:
            task.compile(backend=args.torchcompile)
            model = task.get_trainable_module()
        else:
            model = torch.compile(model, backend=args.torchcompile)

    dataset_train = SquaresDataset(args.num_samples, args.img_size, args.num_classes, seed=args.seed)
    collate_fn = None
    mixup_fn = None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            mode=args.mixup_mode,
            label_smoothing=args.smoothing,
            num_classes=args.num_classes,
        )
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    loader_train = create_loader(
        dataset_train,
        input_size=data_config["input_size"],
        batch_size=args.batch_size,
        is_training=True,
        use_prefetcher=args.prefetcher,
        no_aug=args.no_aug,
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=args.workers,
        collate_fn=collate_fn,
        device=device,
        distributed=args.distributed,
    )
    RUN.update(
        model=model,
        task=task,
        loader=loader_train,
        mixup_fn=mixup_fn,
        collate_fn=collate_fn,
        optimizer=optimizer,
        loss_scaler=loss_scaler,
        args=args,
        args_text=args_text,
    )

    for epoch in range(args.epochs):
        if args.distributed and hasattr(loader_train.sampler, "set_epoch"):
            loader_train.sampler.set_epoch(epoch)
        train_one_epoch(
            epoch,
            model,
            task,
            loader_train,
            optimizer,
            train_loss_fn,
            args,
            device=device,
            amp_autocast=amp_autocast,
            loss_scaler=loss_scaler,
            mixup_fn=mixup_fn,
        )


def train_one_epoch(
    epoch,
    model,
    task,
    loader,
    optimizer,
    loss_fn,
    args,
    device=None,
    amp_autocast=suppress,
    loss_scaler=None,
    mixup_fn=None,
):
    device = device if device is not None else torch.device("cpu")
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and loader.mixup_enabled:
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False

    model.train()
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)

        with amp_autocast():
            if task is not None:
                result = task(input, target)
                loss = result["loss"]
            else:
                loss = loss_fn(model(input), target)

        if loss_scaler is not None:
            loss_scaler(loss, optimizer)
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        if task is not None:
            task.update_ema(step=len(HISTORY) + 1)

        HISTORY.append(
            dict(
                epoch=epoch,
                step=batch_idx,
                loss=float(loss.detach()),
                target=target.detach().float().cpu().clone(),
                input=input.detach().float().cpu().clone(),
                channels_last=bool(input.is_contiguous(memory_format=torch.channels_last)),
                params={k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()},
            )
        )
        _logger.info(f"Train: {epoch} [{batch_idx}/{len(loader)}] Loss: {float(loss.detach()):.4f}")


def write_record(args) -> None:
    """Test only: this rank's final weights and what it trained on, as JSON (for the torchrun test)."""
    record = {
        "rank": args.rank,
        "world_size": args.world_size,
        "seed": torch.initial_seed(),
        "params": {k: v.double().sum().item() for k, v in HISTORY[-1]["params"].items()},
        "inputs": [h["input"].double().sum().item() for h in HISTORY],
        "targets": [h["target"].tolist() for h in HISTORY],
        "losses": [h["loss"] for h in HISTORY],
    }
    with open(f"{args.record}.rank{args.rank}.json", "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main()
    if RUN["args"].record:
        write_record(RUN["args"])
    if RUN["args"].distributed:
        torch.distributed.destroy_process_group()
