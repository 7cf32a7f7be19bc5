"""``--mixup-mode sage`` on timm's own, unmodified ``train.py``.

Use it either way::

    python train.py DATA --mixup 1.0 --mixup-mode sage --device-modules timm_sage.plugin
    timm-sage-train train.py DATA --mixup 1.0 --mixup-mode sage --sage-upper-lambda 0.6

How it works
============
train.py looks its building blocks up as *module globals at call time*: ``Mixup``, ``FastCollateMixup``,
``create_loader``, ``ClassificationTask`` (and the other timm training tasks), ``create_optimizer_v2``.
:func:`install` replaces those names in train.py's namespace, once the parsed ``args``
are known, and only when ``args.mixup_mode == "sage"``; with any other mode nothing is patched and
train.py behaves exactly as stock timm.

* ``--device-modules timm_sage.plugin``: train.py's ``main()`` imports this module right after parsing.
  At import, the module walks up the call stack to ``main()``'s frame, takes its local ``args`` and its
  globals (train.py's namespace) and calls :func:`install` there. The launcher
  (:mod:`timm_sage.launcher`) calls :func:`install` itself, from a wrapper around ``parser.parse_args``.
* ``Mixup(**mixup_args)`` (the ``--no-prefetcher`` path) builds a :class:`PluginSageMixup`: a
  :class:`~timm_sage.SageMixup` with the ``sage_*`` options of ``args`` (from ``--sage-*`` flags of the
  launcher or ``sage_*`` keys of the ``--config`` YAML). train.py calls it as ``mixup_fn(input, target)``
  on the device; it computes saliency from the live model at every call.
* ``FastCollateMixup(**mixup_args)`` (the prefetcher path, the default) returns a
  :class:`DeferredSageCollate`: in the DataLoader workers it only collates (timm's ``fast_collate``:
  uint8 batch, integer targets); it cannot mix there, as the workers hold no model. The
  :class:`PluginSageMixup` it carries stays in the main process (it is not pickled into the workers).
  ``create_loader(..., collate_fn=that)`` returns a
  :class:`DeviceMixLoader` around timm's loader: each batch, already on the device and normalised by the
  ``PrefetchLoader``, is SAGE-mixed there, and comes out with soft targets (B, num_classes) float32 for
  ``SoftTargetCrossEntropy``. The loader's ``mixup_enabled`` *is* the mixer's flag in the main process,
  so ``--mixup-off-epoch`` (train.py sets ``loader.mixup_enabled = False``) switches SAGE off even with
  persistent workers (stock timm misses this: its flag only flips in the main process's copy).
* The model: the task classes (``ClassificationTask``, the distillation tasks) are replaced by subclasses
  whose constructor records the model they receive (after ``.to(device)`` and channels_last), and
  every SAGE mixer binds it. Their ``forward`` multiplies the batch's loss by the mixer's
  ``loss_weight`` (r with ``sage_update_ratio < 1``), so train.py trains on the paper's loss
  ``(1 - r) * l_clean + r * l_mixed`` with its learning rate unchanged: that product's backward also
  adds the clean part, which the SAGE step computed and ``loss_weight`` carries
  (:mod:`timm_sage.core.clean`), scaled by train.py's NativeScaler and divided by
  ``--grad-accum-steps`` like the loss itself, wherever train.py zeroes its gradients. Scripts without
  a task (older train.py) are covered by
  ``create_optimizer_v2(model, ...)``, which records its model argument. Binding strips DDP,
  ``torch.compile`` and EMA wrappers, so the saliency pass runs the plain module, outside DDP's forward,
  so DDP's reducer does not see it.
* ``--torchcompile BACKEND`` (and ``--torchcompile-mode``): train.py compiles the model after the plugin
  has recorded it, so the mixers get ``compile_options`` with that backend and mode, and the saliency
  pass runs ``torch.compile(plain module)``: compiled like the training forward (one extra graph, for
  the input that requires grad; no recompiles after the first step). ``sage_saliency_compile: eager``
  keeps it eager.
* ``--model-ema`` with ``sage_saliency_model: ema``: the mixer takes the EMA that train.py's training task
  keeps (``task.setup_ema``, updated after every optimizer step) as its saliency model, at its first call;
  without ``--model-ema`` that call is a RuntimeError saying so.
* ``--amp``: the saliency pass runs under ``torch.autocast`` with train.py's AMP dtype (train.py mixes
  before entering its own autocast).
* ``--channels-last``: the saliency pass follows the model's memory format.
* Seeds: partners and candidates per rank, ``torch.initial_seed()`` (train.py seeds it with
  ``--seed`` + rank), or ``sage_seed`` + rank when given. The per-batch choice of method (``--mixup-prob``,
  CutMix or SAGE with ``--mixup-switch-prob``) comes from a coin generator seeded alike on every rank
  (train.py's ``--seed``, or ``sage_seed``), so all ranks run the saliency pass on the same steps, as
  ``--sync-bn`` needs (its BatchNorm synchronises across ranks).

Limits: random erasing on the prefetcher path runs before SAGE (stock timm erases after mixing).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import timm_sage.models  # noqa: F401  (registers the CIFAR networks: --model wrn16_8 in timm's train.py)
from timm_sage.config import (
    PRESET_HELP,
    SAGE_DEFAULTS,
    SAGE_PRESETS,
    SEED_HELP,
    SageConfig,
    option_help,
    option_infos,
)
from timm_sage.mixup import SageMixup

__all__ = [
    "SAGE_OPTIONS",
    "SEED_DEFAULT",
    "DeferredSageCollate",
    "DeviceMixLoader",
    "PluginSageMixup",
    "PluginState",
    "banner",
    "current_state",
    "install",
    "logged_as_unweighted",
    "sage_options_from_args",
]

_logger = logging.getLogger(__name__)

STATE_KEY = "__timm_sage_plugin__"

# The default of sage_seed here: train.py seeds torch with its --seed plus the rank before main() mixes.
SEED_DEFAULT = "torch.initial_seed(), which train.py sets to its seed + rank"

# option name (SageMixup keyword) -> (argparse type, choices, help); on args as ``sage_<name>``.
# Every SageConfig option (its meaning, default and where the default comes from), plus the mixer's seed.
SAGE_OPTIONS: dict[str, tuple[Callable[[str], Any], tuple[str, ...] | None, str]] = {
    info.name: (info.kind, info.choices, option_help(info)) for info in option_infos()
}
SAGE_OPTIONS["seed"] = (
    int,
    None,
    f"{SEED_HELP}, plus the rank; also seeds the method coins that all ranks share (default "
    f"{SEED_DEFAULT}, and train.py's --seed for the coins)",
)

SAGE_OPTIONS["preset"] = (str, tuple(SAGE_PRESETS), f"{PRESET_HELP} (default None: SageConfig's defaults)")

_current: PluginState | None = None


@dataclass
class PluginState:
    """What :func:`install` patched in one train.py namespace, and what it found since."""

    namespace: dict[str, Any]
    args: argparse.Namespace | None
    options: dict[str, Any]
    model: nn.Module | None = None
    mixers: list[PluginSageMixup] = field(default_factory=list)
    loaders: list[DeviceMixLoader] = field(default_factory=list)
    originals: dict[str, Any] = field(default_factory=dict)
    task_seen: bool = False
    # The training task (timm's ClassificationTask, ...) last built: its EMA (train.py's --model-ema sets
    # it up inside the task) is the saliency model of sage_saliency_model "ema".
    task: Any = None
    # The weight (r, as a device tensor) that the next task loss takes, set by a SAGE call with r < 1.
    pending_loss_weight: torch.Tensor | None = None

    def take_loss_weight(self) -> torch.Tensor | None:
        """The pending mixed-loss weight, once: the task wrapper applies it to the batch's loss."""
        weight, self.pending_loss_weight = self.pending_loss_weight, None
        return weight

    def set_model(self, model: Any, *, replace: bool) -> None:
        """Record the training model (``replace``: a task's model wins over an optimizer's argument)."""
        if isinstance(model, nn.Module) and (replace or self.model is None):
            self.model = model
            for mixer in self.mixers:
                mixer.model = None  # rebind lazily, at the next call

    def ema_model(self) -> nn.Module | None:
        """The EMA copy train.py keeps (``--model-ema``: ``task.setup_ema``), or None."""
        getter = getattr(self.task, "get_trainable_module", None)
        if not callable(getter):
            return None
        ema = getter(ema=True)
        return ema if isinstance(ema, nn.Module) else None

    def new_mixer(self, mixup_args: dict[str, Any]) -> PluginSageMixup:
        """A SAGE mixer for ``mixup_args`` (timm's arguments) and this run's sage options.

        Seeds: partners and candidates per rank, method coins shared by every rank (see the module
        docstring).
        """
        options = dict(self.options)
        rank = _rank(self.args)
        if options.get("seed") is None:
            options["seed"] = torch.initial_seed()  # train.py seeded it with --seed + rank
            base_seed = getattr(self.args, "seed", None)
            coin_seed = base_seed if isinstance(base_seed, int) and base_seed >= 0 else options["seed"]
        else:
            coin_seed = options["seed"]
            options["seed"] += rank
        mixer = PluginSageMixup(**mixup_args, **options, coin_seed=coin_seed)
        mixer.plugin_state = self
        self.mixers.append(mixer)
        return mixer


def _rank(args: argparse.Namespace | None) -> int:
    """This process's rank: train.py's ``args.rank``, else the process group's, else 0."""
    rank = getattr(args, "rank", None)
    if isinstance(rank, int):
        return rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class PluginSageMixup(SageMixup):
    """SageMixup that finds the model of the run it was installed in at call time."""

    plugin_state: PluginState | None = None

    def __call__(self, x: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor | None = None):
        state = self.plugin_state
        # The live model serves SAGE's saliency and, in any mode, the clean term (update_ratio < 1).
        needs_model = self.mode == "sage" or self.config.update_ratio < 1
        if needs_model and saliency is None and state is not None and self.model is None:
            if state.model is None:
                raise RuntimeError(
                    "timm_sage.plugin: no model to compute saliency from; the training script built no "
                    "timm task (ClassificationTask, ...) and called no create_optimizer_v2(model, ...) "
                    "before the first batch; bind one with "
                    "plugin.current_state().set_model(model, replace=True)"
                )
            ema = None
            if self.config.saliency_model == "ema":
                ema = state.ema_model()
                if ema is None:
                    raise RuntimeError(
                        "timm_sage.plugin: sage_saliency_model 'ema' takes the saliency from train.py's "
                        "model EMA, and this run keeps none; add --model-ema (a train.py whose training task "
                        "sets up the EMA), or use sage_saliency_model live"
                    )
            self.bind(state.model, ema_model=ema)
        if state is not None and self.config.update_ratio < 1 and not state.task_seen:
            raise RuntimeError(
                "timm_sage.plugin: sage_update_ratio < 1 weights train.py's mixed loss by r inside timm's "
                "training task (ClassificationTask), and this script computes its loss without one (an "
                "older train.py); use sage_update_ratio 1, or a train.py that builds a task"
            )
        out = super().__call__(x, target, saliency)
        if state is not None and isinstance(self.loss_weight, torch.Tensor) and self.config.update_ratio < 1:
            state.pending_loss_weight = self.loss_weight
        return out


class DeferredSageCollate:
    """The ``FastCollateMixup`` stand-in: plain ``fast_collate`` in the workers, the mixer kept aside.

    ``__call__(batch)`` -> (uint8 (B, C, H, W), int64 (B,)). ``mixer`` is dropped when pickled, so the
    workers never receive the model.
    """

    def __init__(self, mixer: PluginSageMixup) -> None:
        self.mixer: PluginSageMixup | None = mixer

    def __call__(self, batch: list[tuple[Any, Any]], _: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.loader import fast_collate

        return fast_collate(batch)

    @property
    def mixup_enabled(self) -> bool:
        return bool(self.mixer is not None and self.mixer.mixup_enabled)

    @mixup_enabled.setter
    def mixup_enabled(self, value: bool) -> None:
        if self.mixer is not None:
            self.mixer.mixup_enabled = bool(value)

    def __getstate__(self) -> dict[str, Any]:
        return {"mixer": None}


class DeviceMixLoader:
    """Wraps timm's training loader: SAGE-mixes each device batch in the main process.

    Yields ``(input (B, C, H, W) float, target (B, num_classes) float32)``. Every other attribute
    (``sampler``, ``dataset``, ``len()``, ...) is the wrapped loader's.
    """

    def __init__(self, loader: Any, mixer: PluginSageMixup) -> None:
        self.loader = loader
        self.mixer = mixer

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, target in self.loader:
            if not inputs.is_floating_point():
                raise TypeError(
                    "timm_sage.plugin: the SAGE collate needs timm's prefetcher (normalised float batches "
                    f"on the device), got {inputs.dtype} batches; drop --no-prefetcher or pass a loader "
                    "built with use_prefetcher=True"
                )
            yield self.mixer(inputs, target)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def mixup_enabled(self) -> bool:
        return bool(self.mixer.mixup_enabled)

    @mixup_enabled.setter
    def mixup_enabled(self, value: bool) -> None:
        self.mixer.mixup_enabled = bool(value)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "mixer"):
            raise AttributeError(name)
        return getattr(self.loader, name)


def sage_options_from_args(args: argparse.Namespace | None) -> dict[str, Any]:
    """SageMixup keywords from ``args.sage_*`` (None values skipped) plus ``amp_dtype`` from ``--amp`` and
    ``compile_options`` from ``--torchcompile`` / ``--torchcompile-mode``.

    With ``sage_preset``, every SageConfig option is returned: the preset's values, overridden by the
    ``sage_*`` values given (not None), as :meth:`timm_sage.SageConfig.from_preset` resolves them.

    Raises:
        ValueError: an unknown ``sage_*`` key (a typo in the YAML), or a value of the wrong kind.
    """
    if args is None:
        return {}
    options: dict[str, Any] = {}
    for key, value in sorted(vars(args).items()):
        if not key.startswith("sage_"):
            continue
        name = key[len("sage_") :]
        if name not in SAGE_OPTIONS:
            known = ", ".join(f"sage_{n}" for n in SAGE_OPTIONS)
            raise ValueError(f"unknown SAGE option {key!r} (--config or command line); known: {known}")
        if value is None:
            continue
        kind, choices, _ = SAGE_OPTIONS[name]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{key} must be a {kind.__name__}, got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        options[name] = value
    preset = options.pop("preset", None)
    config = SageConfig.from_mapping(
        {f"sage_{k}": v for k, v in options.items() if k in SageConfig.names()},
        prefix="sage_",
        source="args",
        preset=preset,
    )  # every rule checked once, here, with errors naming the sage_* key
    if preset is not None:
        # The preset resolved here (sage_* values given win): the mixer gets every option as a keyword.
        options.update(config.as_dict())
    backend = getattr(args, "torchcompile", None)
    if backend:
        # train.py compiles the model after the plugin has seen it: the saliency pass is compiled with
        # the same backend and mode (sage_saliency_compile: eager keeps it eager).
        options["compile_options"] = {"backend": backend}
        if getattr(args, "torchcompile_mode", None):
            options["compile_options"]["mode"] = args.torchcompile_mode
    if getattr(args, "amp", False) and getattr(args, "amp_impl", "native") != "apex":
        low_precision = getattr(args, "amp_dtype", "float16")
        options["amp_dtype"] = torch.bfloat16 if low_precision == "bfloat16" else torch.float16
    return options


def _mixing_active(args: argparse.Namespace) -> bool:
    """train.py's rule: mixing is on when ``mixup > 0 or cutmix > 0 or cutmix_minmax is not None``."""
    mixup, cutmix = getattr(args, "mixup", 0) or 0, getattr(args, "cutmix", 0) or 0
    return mixup > 0 or cutmix > 0 or getattr(args, "cutmix_minmax", None) is not None


def _wants_clean_term(options: dict[str, Any]) -> bool:
    """``sage_update_ratio < 1``: the clean term, which a mode other than sage also takes from us."""
    return options.get("update_ratio", SAGE_DEFAULTS.update_ratio) < 1


def _is_ours(mixup_args: dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether our mixer builds this mixing: mode sage, or timm's modes with the clean term."""
    return mixup_args.get("mode") == "sage" or _wants_clean_term(options)


def _model_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for key in ("model", "student_model"):
        if key in kwargs:
            return kwargs[key]
    return args[0] if args else None


def _patch_tasks(state: PluginState) -> None:
    try:
        from timm.task import TrainingTask
    except ImportError:  # timm without tasks: the optimizer hook finds the model
        return
    for name, value in list(state.namespace.items()):
        if not (isinstance(value, type) and issubclass(value, TrainingTask)):
            continue

        def __init__(self: Any, *args: Any, _base: type = value, **kwargs: Any) -> None:
            _base.__init__(self, *args, **kwargs)
            state.task_seen = True
            state.task = self
            state.set_model(_model_argument(args, kwargs), replace=True)

        def forward(self: Any, *args: Any, _base: type = value, **kwargs: Any) -> Any:
            # The paper's loss (1 - r) * l_clean + r * l_mixed: the mixed loss of this batch takes the
            # weight r here, and the product's backward adds the clean part the weight carries, so
            # train.py needs no change.
            result = _base.forward(self, *args, **kwargs)
            weight = state.take_loss_weight()
            if weight is not None and isinstance(result, dict) and "loss" in result:
                result = {**result, "loss": logged_as_unweighted(result["loss"], weight)}
            return result

        namespace = {"__init__": __init__, "forward": forward, "__module__": value.__module__}
        patched = type(value.__name__, (value,), namespace)
        patched.__qualname__ = value.__qualname__
        state.originals[name] = value
        state.namespace[name] = patched


def logged_as_unweighted(loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``loss * weight``'s gradient with ``loss``'s value: train.py logs ``loss.item()``, so its ``Loss``
    stays the mixed-batch loss before its weight, comparable with a run at ``update_ratio`` 1 (and with
    ``timm-sage train``'s ``train_loss``), while the backward is the paper's weighted loss (the clean part
    rides on ``weight``). Both are 0-dim tensors; the result is 0-dim, of ``loss``'s dtype."""
    weighted = loss * weight
    return weighted + (loss - weighted).detach()


def banner(state: PluginState) -> str:
    """The one start-up line: what was patched, and every SAGE option in effect (the mixer's values)."""
    options = {name: state.options[name] for name in SageConfig.names() if name in state.options}
    config = SageConfig(**options)
    shown = [f"{name}={value}" for name, value in config.as_dict().items()]
    seed = state.options.get("seed")
    shown.append("seed=train.py's --seed + rank" if seed is None else f"seed={seed} + rank")
    for extra in ("amp_dtype", "compile_options"):
        if extra in state.options:
            shown.append(f"{extra}={state.options[extra]}")
    mode = getattr(state.args, "mixup_mode", None) or "sage"
    return (
        f"timm_sage.plugin: installed for --mixup-mode {mode} ({', '.join(sorted(state.originals))}); "
        + "SAGE options: "
        + " ".join(shown)
        + "; the logged Loss is the mixed-batch loss before the update_ratio weight"
    )


def _wrap(state: PluginState, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = state.namespace.get(name)
    if original is None:
        return
    state.originals[name] = original
    wrapper = make(original)
    functools.update_wrapper(wrapper, original)
    state.namespace[name] = wrapper


def install(namespace: dict[str, Any], args: argparse.Namespace | None = None) -> PluginState | None:
    """Patch a train.py namespace for ``--mixup-mode sage``; see the module docstring.

    Args:
        namespace: train.py's module globals (``vars(module)``).
        args: the parsed arguments. When given and ``args.mixup_mode != "sage"``, nothing is patched
            and None is returned. When None, the factories decide per call from ``mode``.

    Returns:
        The :class:`PluginState` of this namespace (the same one if called again), or None.

    Raises:
        ValueError: a bad ``sage_*`` option.
    """
    global _current
    if not isinstance(namespace, dict):
        raise TypeError(f"namespace must be a module's globals dict, got {type(namespace).__name__}")
    existing = namespace.get(STATE_KEY)
    if existing is not None:
        if args is not None:
            existing.args = args
            existing.options = sage_options_from_args(args)
        return existing
    options = sage_options_from_args(args)
    if args is not None and getattr(args, "mixup_mode", None) != "sage" and not _wants_clean_term(options):
        return None
    if args is not None and getattr(args, "mixup_mode", None) == "sage" and not _mixing_active(args):
        warnings.warn(
            "--mixup-mode sage has no effect without --mixup ALPHA > 0 (train.py mixes only when --mixup, "
            "--cutmix or --cutmix-minmax is set): use --mixup 1.0 --mixup-mode sage",
            UserWarning,
            stacklevel=2,
        )
    state = PluginState(namespace=namespace, args=args, options=options)

    def make_mixup(original: Callable[..., Any]) -> Callable[..., Any]:
        def Mixup(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands in for the class
            ours = not args and _is_ours(kwargs, state.options)
            return state.new_mixer(kwargs) if ours else original(*args, **kwargs)

        return Mixup

    def make_collate(original: Callable[..., Any]) -> Callable[..., Any]:
        def FastCollateMixup(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands in for the class
            if args or not _is_ours(kwargs, state.options):
                return original(*args, **kwargs)
            return DeferredSageCollate(state.new_mixer(kwargs))

        return FastCollateMixup

    def make_loader(original: Callable[..., Any]) -> Callable[..., Any]:
        def create_loader(*args: Any, **kwargs: Any) -> Any:
            collate = kwargs.get("collate_fn")
            loader = original(*args, **kwargs)
            if isinstance(collate, DeferredSageCollate) and collate.mixer is not None:
                loader = DeviceMixLoader(loader, collate.mixer)
                state.loaders.append(loader)
            return loader

        return create_loader

    def make_optimizer(original: Callable[..., Any]) -> Callable[..., Any]:
        def create_optimizer_v2(*args: Any, **kwargs: Any) -> Any:
            state.set_model(_model_argument(args, kwargs), replace=False)
            return original(*args, **kwargs)

        return create_optimizer_v2

    _wrap(state, "Mixup", make_mixup)
    _wrap(state, "FastCollateMixup", make_collate)
    _wrap(state, "create_loader", make_loader)
    _wrap(state, "create_optimizer_v2", make_optimizer)
    _patch_tasks(state)
    namespace[STATE_KEY] = state
    _current = state
    _logger.info(banner(state))
    return state


def current_state() -> PluginState | None:
    """The state of the last :func:`install` in this process (None before any)."""
    return _current


def _install_from_importer() -> PluginState | None:
    """``--device-modules`` hook: find train.py's ``main()`` frame above this import and install there."""
    frame = sys._getframe(1)
    while frame is not None:
        namespace = frame.f_globals
        builds_mixers = "Mixup" in namespace or "FastCollateMixup" in namespace
        if namespace.get("__name__") != __name__ and builds_mixers:
            args = frame.f_locals.get("args")
            if isinstance(args, argparse.Namespace):
                return install(namespace, args)
        frame = frame.f_back
    _logger.debug("timm_sage.plugin imported outside a train.py main(): nothing installed")
    return None


_install_from_importer()
