"""``timm-sage bench step --model NAME --img-size N --batch-size B``: SAGE's cost at the user's scale, for any
timm model, in one process (the variants timed in turn, medians, ratios to the vanilla step).

Rows: the vanilla step; SAGE with the exact search (``search_size`` None, the reference's); SAGE with the
default search (``search_size="auto"``); the cheapest levers with the default search (``saliency_scale``
0.5, ``saliency_size`` a quarter of the side); and the search alone (``sage_mix`` on this batch's
saliency, exact and default), whose share of the SAGE step is printed. ``--amp`` (bf16 autocast),
``--channels-last`` and ``--compile BACKEND`` apply to every row. A model with a fixed input size (timm
ViTs) is built with ``dynamic_img_size=True`` and ``dynamic_img_pad=True`` at ``--img-size``, so that the
levers can run it smaller.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from timm_sage import functional
from timm_sage.config import SageConfig
from timm_sage.core import search as _search
from timm_sage.mixup import SageMixup, fixed_input_size
from timm_sage.tools.timing import BenchRow, interleaved_times_ms

__all__ = [
    "MODEL_STEP_VARIANTS",
    "add_model_arguments",
    "build_model",
    "check_model_arguments",
    "model_command",
    "suite_model_step",
]

# name -> SageConfig options (update_ratio 1: the clean term off, the setting whose cost SAGE adds least).
# "{quarter}" is filled with a quarter of the image side.
MODEL_STEP_VARIANTS: dict[str, dict[str, object]] = {
    "sage exact search update_ratio=1": {"search_size": None},
    "sage default search update_ratio=1": {},
    "sage default search saliency_scale=0.5 update_ratio=1": {"saliency_scale": 0.5},
    "sage default search saliency_size={quarter} update_ratio=1": {"saliency_size": "{quarter}"},
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--model`` family of flags (step suite at the user's scale)."""
    group = parser.add_argument_group("step at your scale (bench step --model NAME)")
    group.add_argument("--model", default=None, help="step suite: any timm model name, at --img-size")
    group.add_argument("--img-size", type=int, default=224, help="with --model: image side (default 224)")
    group.add_argument("--batch-size", type=int, default=16, help="with --model: batch size (default 16)")
    group.add_argument("--num-classes", type=int, default=1000, help="with --model: classes (default 1000)")
    group.add_argument("--amp", action="store_true", help="with --model: bf16 autocast (SAGE's pass too)")
    group.add_argument("--channels-last", action="store_true", help="with --model: channels_last model/batch")
    group.add_argument(
        "--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
        help="with --model: torch.compile every row's model (default backend inductor)",
    )  # fmt: skip


def model_command(args: argparse.Namespace) -> str:
    """The ``--model`` flags of ``args`` as a command line writes them (empty without ``--model``)."""
    if getattr(args, "model", None) is None:
        return ""
    command = f" --model {args.model} --img-size {args.img_size} --batch-size {args.batch_size}"
    command += f" --num-classes {args.num_classes}" if args.num_classes != 1000 else ""
    command += " --amp" if args.amp else ""
    command += " --channels-last" if args.channels_last else ""
    command += f" --compile {args.compile}" if args.compile else ""
    return command


def check_model_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the flag: ``--model`` with a suite other than step, or a bad size."""
    if getattr(args, "model", None) is None:
        return
    if list(args.suites) != ["step"]:
        raise ValueError(f"--model runs the step suite alone: use `bench step --model {args.model}`")
    for flag, value in (("--img-size", args.img_size), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.num_classes < 2:
        raise ValueError(f"--num-classes must be >= 2, got {args.num_classes}")


def build_model(name: str, size: int, num_classes: int, device: torch.device) -> torch.nn.Module:
    """``timm.create_model(name)``; one that takes a single input size is built again at ``size`` with
    ``dynamic_img_size=True`` and ``dynamic_img_pad=True`` (the levers run it smaller, at any size)."""
    import timm

    model = timm.create_model(name, num_classes=num_classes)
    if fixed_input_size(model) is not None:
        model = timm.create_model(
            name, num_classes=num_classes, img_size=size, dynamic_img_size=True, dynamic_img_pad=True
        )
    return model.to(device).train()


def _variants(size: int, sources: tuple[str, ...] = ()) -> dict[str, dict[str, object]]:
    """The SAGE rows; ``sources`` (``--saliency-source``): also the forward-only ones among them, at full
    and half resolution, with the default search."""
    quarter = max(1, size // 4)
    out = {}
    for name, options in MODEL_STEP_VARIANTS.items():
        filled = {k: (quarter if v == "{quarter}" else v) for k, v in options.items()}
        out[name.format(quarter=quarter)] = {"update_ratio": 1.0, **filled}
    for source in (s for s in ("cam", "features") if s in sources):
        out[f"sage default search saliency_source={source} update_ratio=1"] = {
            "update_ratio": 1.0, "saliency_source": source,
        }  # fmt: skip
        out[f"sage default search saliency_source={source} saliency_scale=0.5 update_ratio=1"] = {
            "update_ratio": 1.0, "saliency_source": source, "saliency_scale": 0.5,
        }  # fmt: skip
    return out


def suite_model_step(
    device: torch.device, repeats: int, warmup: int, args: argparse.Namespace
) -> list[BenchRow]:
    """The rows of the module docstring for ``args.model``; prints the search's share of the SAGE step."""
    size, batch, classes = args.img_size, args.batch_size, args.num_classes
    amp, channels_last, backend = args.amp, args.channels_last, args.compile
    flags = " ".join(
        f for f, on in (("bf16", amp), ("cl", channels_last), (f"compile={backend}", backend)) if on
    )
    case = f"{args.model} B={batch} 3x{size}x{size}" + (f" {flags}" if flags else "")
    torch.manual_seed(0)
    base = build_model(args.model, size, classes, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    base = base.to(memory_format=memory_format)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=amp)
    if backend is not None:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    def make_step(mixer_options: dict[str, object] | None) -> Callable[[], None]:
        plain = copy.deepcopy(base)
        model = torch.compile(plain, backend=backend) if backend is not None else plain
        optimizer = torch.optim.SGD(plain.parameters(), lr=1e-4, momentum=0.9)
        mixer = None
        if mixer_options is not None:
            mixer = SageMixup(
                mixup_alpha=1.0, mode="sage", label_smoothing=0.0, num_classes=classes, model=model,
                config=SageConfig(**mixer_options), seed=0, amp_dtype=torch.bfloat16 if amp else None,
            )  # fmt: skip

        def step() -> None:
            if mixer is None:
                images, target, weight = x, F.one_hot(y, classes).float(), 1.0
            else:
                images, target = mixer(x, y)
                weight = mixer.loss_weight
            with autocast():
                logits = model(images.contiguous(memory_format=memory_format))
            loss = torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean() * weight
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    variants = _variants(size, tuple(getattr(args, "saliency_source", None) or ()))
    steps: dict[str, Callable[[], object]] = {"vanilla": make_step(None)}
    steps.update({name: make_step(options) for name, options in variants.items()})
    # The search alone, on this batch's saliency (the SAGE step's own maps), exact and default.
    with autocast():
        saliency = functional.saliency_map(copy.deepcopy(base), x, y)  # a copy: the timed models untouched
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(1)).to(device)
    grids = {}
    for label, search_size in (("exact", None), ("default", "auto")):
        translations = functional.sample_translations(
            size,
            size,
            SageConfig().rand_pos,
            generator=torch.Generator().manual_seed(2),
            search_size=search_size,
        )
        factor = _search.pooling_factor(size, size, search_size)
        grids[label] = (-(-size // factor), translations.shape[0])
        steps[f"search alone {label} (sage_mix)"] = functools.partial(
            functional.sage_mix, x, saliency, perm=perm, prior=0.3, translations=translations.to(device),
            search_size=search_size,
        )  # fmt: skip
    if backend is not None:
        for call in steps.values():
            call()  # compiles outside the timed runs
    times = interleaved_times_ms(steps, device, repeats=repeats, warmup=warmup, desc=f"bench {case}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = []
    for name, ms in medians.items():
        extra: dict[str, object] = {"min_ms": min(times[name]), "max_ms": max(times[name])}
        for label, (grid, count) in grids.items():
            if name.startswith(f"search alone {label}") or name.startswith(f"sage {label} search"):
                extra.update(search_grid=grid, candidates=count)
        rows.append(BenchRow("step", case, name, ms, "vanilla", ms / medians["vanilla"], extra))
    for label, (grid, count) in grids.items():
        search_ms = medians[f"search alone {label} (sage_mix)"]
        step_ms = medians[f"sage {label} search update_ratio=1"]
        print(
            f"search share ({label} search, {grid} x {grid} grid, K={count}): {search_ms:.1f} ms of the "
            f"{step_ms:.1f} ms SAGE step = {100 * search_ms / step_ms:.1f} % ({case})"
        )
    return rows
