"""One line of help for every key of ``timm-sage train`` (``timm-sage train --help`` prints them).

The one source of the descriptions of the config keys: ``KEY_HELP`` for the keys this trainer implements
(``SUPPORTED`` less the ``sage_*`` keys, whose help comes from :class:`timm_sage.SageConfig`), and
:func:`key_help` for every key, the ignored (``NEUTRAL``) and the off-only (``DEFAULT_ONLY``) train.py
keys included. ``tests/test_cli.py`` checks that every key has a description.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KEY_HELP", "key_help"]

KEY_HELP: dict[str, str] = {
    # data
    "dataset": "fashion_mnist, mnist, cifar10, cifar100, fashion_mnist_scenes, or folder ('': an ImageFolder "
    "tree in data_dir); another name goes to timm's create_dataset without download",
    "data_dir": "the dataset's folder (fashion_mnist: the four *-idx?-ubyte.gz files; default "
    "/usr/share/datasets/fashion-mnist, from the Debian package dataset-fashion-mnist)",
    "data": "train.py's older spelling of data_dir",
    "train_split": "the ImageFolder subfolder of the training images",
    "val_split": "the ImageFolder subfolder of the test images",
    "dataset_download": "train.py's download switch; never downloads here: only false is accepted",
    "class_map": "a file mapping folder names to class indices (timm's class_map)",
    "input_size": "C H W of the network's input; images are resized to H W",
    "img_size": "H (= W) of the input, when input_size is not given",
    "in_chans": "the input's channels, when input_size is not given",
    "mean": "per-channel mean of the input normalisation (unset: the dataset's, else the model's)",
    "std": "per-channel standard deviation of the input normalisation (unset: as mean)",
    "hflip": "probability of a horizontal flip of each training image",
    "no_aug": "no augmentation of the training images (no pad-crop, no flip)",
    "train_subset": "train on this many images of the training set, class-balanced (a fixed draw)",
    "val_size": "hold out this many training-pool images (class-balanced) as a validation split",
    "batch_size": "training batch size",
    "validation_batch_size": "evaluation batch size (default: batch_size)",
    "workers": "train.py's loader processes; the data lie in memory here, so only >= 0 is checked",
    # model
    "model": "a timm model name (timm.list_models()), or a CIFAR network of timm_sage (preactresnet18, "
    "wrn16_8, resnext29_4_24, preactresnet18_tiny)",
    "num_classes": "the classifier's width (default: the dataset's class count)",
    "pretrained": "start from timm's pretrained weights (from the local Hugging Face cache: no download "
    "with HF_HUB_OFFLINE=1)",
    "initial_checkpoint": "start from the weights of this checkpoint file",
    "drop": "dropout rate before the classifier",
    "drop_path": "stochastic-depth rate (models that have it)",
    "drop_block": "DropBlock rate (models that have it)",
    "gp": "global pooling type (avg, max, avgmax, ...; models that take it)",
    "bn_momentum": "BatchNorm momentum override",
    "bn_eps": "BatchNorm epsilon override",
    "model_kwargs": "extra keyword arguments of timm.create_model, a mapping (YAML) or KEY=VALUE pairs",
    "channels_last": "channels-last memory format for the model and the batches",
    # optimizer
    "opt": "optimizer name of timm's create_optimizer_v2 (sgd, adamw, lamb, ...)",
    "opt_eps": "optimizer epsilon",
    "opt_betas": "optimizer betas",
    "opt_kwargs": "extra keyword arguments of the optimizer",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (timm exempts biases and norm weights)",
    "clip_grad": "clip gradients at this value (off when unset)",
    "clip_mode": "gradient clipping mode: norm, value or agc",
    "layer_decay": "layer-wise learning-rate decay",
    "lr": "learning rate (default: lr_base scaled to the batch size)",
    "lr_base": "base learning rate for lr_base_size images per batch, used when lr is unset",
    "lr_base_size": "the batch size of lr_base",
    "lr_base_scale": "how lr_base scales with the batch size: linear or sqrt ('': by optimizer)",
    # schedule
    "sched": "learning-rate schedule of timm's create_scheduler_v2 (cosine, step, multistep, plateau, ...)",
    "sched_on_updates": "step the schedule at every optimizer update instead of every epoch",
    "epochs": "epochs to train",
    "decay_milestones": "epochs at which multistep decays the learning rate",
    "decay_epochs": "epoch interval of step decay",
    "decay_rate": "decay factor of step and multistep",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "warmup_lr": "learning rate at the start of warm-up",
    "warmup_prefix": "warm-up epochs come before (not inside) the schedule",
    "min_lr": "lowest learning rate of the schedule",
    "cooldown_epochs": "epochs at min_lr after the schedule",
    "patience_epochs": "plateau schedule: epochs without improvement before a decay",
    "lr_noise": "epoch range (start [end]) of learning-rate noise",
    "lr_noise_pct": "learning-rate noise limit, as a share of the rate",
    "lr_noise_std": "learning-rate noise standard deviation",
    "lr_cycle_mul": "cosine restarts: length multiplier of each cycle",
    "lr_cycle_decay": "cosine restarts: rate multiplier of each cycle",
    "lr_cycle_limit": "cosine restarts: number of cycles",
    "lr_k_decay": "the k of timm's cosine/poly k-decay",
    # mixing and loss
    "mixup": "mixup alpha (> 0 turns mixing on; with mixup_mode sage it is SAGE's Beta alpha)",
    "cutmix": "CutMix alpha (> 0 turns it on; timm's modes only)",
    "cutmix_minmax": "CutMix box ratio range, instead of alpha",
    "mixup_prob": "probability of mixing a batch",
    "mixup_switch_prob": "probability of CutMix instead of Mixup when both are on",
    "mixup_mode": "batch, pair or elem (timm's Mixup), half, or sage (SAGE; the sage_* options apply)",
    "mixup_off_epoch": "stop mixing from this epoch on (0: never)",
    "mixup_on_epoch": "start mixing at this epoch: the epochs before train unmixed (0: from the first; ours, "
    "not train.py's)",
    "mixup_on_train_top1": "and not before an epoch has reached this training top-1 (percent; mixing starts "
    "in the next epoch): a run leaves chance unmixed, whatever its seed (0: off; ours)",
    "smoothing": "label smoothing",
    # precision, EMA, run
    "amp": "mixed precision (autocast) for the forward and backward",
    "amp_dtype": "autocast dtype: float16 or bfloat16",
    "device": "torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)",
    "torchcompile": "torch.compile backend for the model (train.py's --torchcompile; usually inductor)",
    "torchcompile_mode": "torch.compile mode (default, reduce-overhead, max-autotune)",
    "model_ema": "keep an exponential moving average of the weights and evaluate it too",
    "model_ema_decay": "EMA decay per update",
    "model_ema_warmup": "EMA decay warm-up (timm's ModelEmaV3)",
    "seed": "seed of the weights, the data order and augmentation (and the mixer, unless sage_seed)",
    "eval_interval": "evaluate every this many epochs (and after the last)",
    "eval_train": "also evaluate on the training images each time",
    "output": "folder of the run folders (default output/train)",
    "experiment": "the run folder's name (default DATE-TIME-MODEL-SIZE); an existing run's folder is never "
    "reused: NAME-1, NAME-2, ... follow",
    "resume": "continue the run in this folder (or checkpoint file) with its own settings; only epochs "
    "may change",
    # the fashion_mnist_scenes generator (timm_sage.data.scenes.SceneParams)
    "scenes_canvas": "fashion_mnist_scenes: side of the square RGB image, px",
    "scenes_min_area": "fashion_mnist_scenes: smallest share of the canvas the garment's frame covers",
    "scenes_max_area": "fashion_mnist_scenes: largest share of the canvas the garment's frame covers",
    "scenes_min_crop": "fashion_mnist_scenes: smallest background crop, a share of the photograph's side",
    "scenes_max_crop": "fashion_mnist_scenes: largest background crop, a share of the photograph's side",
    "scenes_clutter": "fashion_mnist_scenes: what lies under the garment: blobs, garments or none",
    "scenes_fragments": "fashion_mnist_scenes: at most this many clutter objects per image",
    "scenes_fragment_area": "fashion_mnist_scenes: each clutter object's share of the canvas",
    "scenes_train_size": "fashion_mnist_scenes: training images (class-balanced)",
    "scenes_val_size": "fashion_mnist_scenes: validation images, disjoint from the training ones",
    "scenes_test_size": "fashion_mnist_scenes: test images (0: all 10,000)",
    "scenes_photos": "fashion_mnist_scenes: where the backgrounds come from: skimage (scikit-image's "
    "sample photographs, disjoint per split) or pooled (Debian wallpapers and scikit-image photographs; "
    "validation and test from halves of the same held-out ones)",
    "scenes_seed": "fashion_mnist_scenes: seed of every draw of the generator",
}


def key_help(key: str, default: Any = None, *, neutral: bool = False, default_only: bool = False) -> str:
    """The description of config ``key`` for ``--help``: its ``KEY_HELP`` line with ``default``; the
    ``neutral`` keys (ignored here) and the ``default_only`` ones (not implemented) share one line each.

    A key missing from ``KEY_HELP`` gets a bare line naming it, so that a key added elsewhere never
    breaks the command; ``tests/test_cli.py`` keeps the table complete.
    """
    if neutral:
        return "train.py keys about logging, speed or distribution: accepted with any value and ignored"
    if default_only:
        return "train.py features not implemented here: accepted only at train.py's default (off) value"
    text = KEY_HELP.get(key, f"the config key {key}")
    shown = "unset" if default is None else repr(default) if isinstance(default, str) else default
    return f"{text} (default {shown})"
