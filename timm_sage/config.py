"""SageConfig: every SAGE option, its default, its choices and its cross-field rules, defined once.

Every entry point derives from this class: :class:`timm_sage.SageMixup`'s keyword arguments, the
plugin's and launcher's ``--sage-*`` flags, ``timm-sage train``'s ``sage_*`` YAML keys, the torchvision
and albumentations transforms, and every options table of the docs (``python -m
timm_sage.tools.docs_options --write``). Adding an option means adding one field here, with its
``help`` and where its default comes from (``origin``, ``reference``, ``recipes``), and using it.

Most defaults are the reference code's (the authors' SamsungLabs/SAGE); ``upper_lambda`` and
``rand_pos`` default to the value of the paper's CIFAR recipes instead, and the recipes also set
``update_ratio`` below our (and the reference code's) default of 1. Each field's metadata says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from timm_sage.core import checks

__all__ = [
    "DEFAULT_ORIGINS",
    "PRESET_HELP",
    "SAGE_DEFAULTS",
    "SAGE_PRESETS",
    "SAGE_PRESET_DESCRIPTIONS",
    "SAGE_RETIRED_PRESETS",
    "SEED_HELP",
    "OptionInfo",
    "SageConfig",
    "SearchSize",
    "add_option_arguments",
    "config_from_args",
    "option_help",
    "option_infos",
]

SALIENCY_LOSSES = ("bce_softmax", "cross_entropy")
SALIENCY_REDUCTIONS = ("mean_abs", "l2")
REARRANGEMENTS = ("search", "none", "random")
SALIENCY_MODES = ("train", "eval")
CLEAN_TERMS = ("separate_pass", "in_batch")
SALIENCY_COMPILES = ("follow", "eager")
SALIENCY_SOURCES = ("gradient", "cam", "features")
SALIENCY_MODELS = ("live", "ema")


# Where a default comes from: "reference", the authors' code (its argparse default, or what it always
# does when it has no such option); "recipe", the value the paper's CIFAR recipes pass, where the
# reference code's own default differs; "departure", ours, a named departure from the reference code
# (docs/algorithm.md, "Where we depart from the reference code") whose field's ``reference`` says when
# it gives the reference code's behaviour.
DEFAULT_ORIGINS = ("reference", "recipe", "departure")

# sage_seed is an option of the entry points (the mixer's seed), not of SageConfig; its default differs
# between them (timm_sage.plugin.SEED_DEFAULT, timm_sage.train.config.SAGE_SEED_DEFAULT).
SEED_HELP = "seed of SAGE's random draws (pairing, prior, candidate translations)"


# Named settings that fill SageConfig (SageConfig.from_preset; SageMixup(preset=...); the sage_preset
# key / --sage-preset flag of timm-sage train and of timm's train.py): options given explicitly win over
# the preset's values, the others take them. SageConfig's own defaults stay the reference code's.
SAGE_PRESETS: dict[str, dict[str, Any]] = {
    "clutter": {"upper_lambda": 0.6, "update_ratio": 0.7, "rand_pos": 0.01, "saliency_loss": "cross_entropy"},
}
SAGE_PRESET_DESCRIPTIONS: dict[str, str] = {
    "clutter": "the paper's CIFAR-10 PreActResNet18 settings with the cross-entropy saliency loss; the best "
    "mean validation top-1 among the SAGE settings of the 500-image scenes study (docs/results.md)",
}
# Presets the evidence stopped supporting: still reachable with the same values (a user's config keeps
# training as before), but using one warns (FutureWarning) with the reason; removed in the next minor release.
SAGE_RETIRED_PRESETS: dict[str, str] = {
    "clutter": "retired in 0.2.0 and removed in 0.3.0: on the scenes-2 benchmark (docs/results.md, "
    "scenes-2 study) it was the SAGE setting chosen on validation but did not beat no mixing beyond the "
    "95 % interval at equal epochs, and trailed it at equal training time. It gives the same options as "
    "before; to keep them, write them out: upper_lambda 0.6, update_ratio 0.7, rand_pos 0.01, "
    "saliency_loss cross_entropy",
}

# sage_preset is an option of the entry points (it fills SageConfig), not a SageConfig field.
PRESET_HELP = (
    "a named setting that fills the SAGE options not given explicitly (explicit sage_* values win): "
    + "; ".join(
        f"{name}{' (retired)' if name in SAGE_RETIRED_PRESETS else ''}: "
        f"{', '.join(f'{k} {v}' for k, v in values.items())}"
        for name, values in SAGE_PRESETS.items()
    )
)


class _SearchSizeMeta(type):
    def __instancecheck__(cls, value: Any) -> bool:
        if value is None or value in ("auto", "none"):
            return True
        return isinstance(value, int) and not isinstance(value, bool)


class SearchSize(metaclass=_SearchSizeMeta):
    """The kind of ``search_size`` on a command line or in YAML: ``"auto"``, ``"none"`` (the exact search;
    SageConfig reads it as None, which the entry points take for "not given") or an int.
    ``SearchSize("56")`` is 56; ``isinstance(v, SearchSize)`` holds for the values SageConfig takes (its
    own check names the option on a bad one)."""

    def __new__(cls, value: Any) -> Any:  # type: ignore[misc]
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        text = str(value).strip().lower()
        if text in ("auto", "none"):
            return text
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected 'auto', 'none' or an int, got {value!r}") from None


def _option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    kind: type = float,
    origin: str | None = None,
    reference: str | None = None,
    recipes: str | None = None,
    paper: str | None = None,
) -> Any:
    """A SageConfig field with the metadata that the flags, the YAML keys and the docs are made from.

    ``help``: what the option means, one phrase, without the default (added where it is shown).
    ``origin``: where the default comes from, one of :data:`DEFAULT_ORIGINS` (``tests/test_docs_options.py``
    requires it). ``reference``: the reference code's flag and default, or what it does without one.
    ``recipes``: the values the paper's CIFAR recipes pass, when they set the option (None: they leave it
    at the reference code's default). ``paper``: what the paper calls it (None: not in the paper).
    """
    if origin is not None and origin not in DEFAULT_ORIGINS:
        raise ValueError(f"origin must be one of {DEFAULT_ORIGINS}, got {origin!r}")
    metadata = {"help": help, "choices": choices, "kind": kind}
    metadata.update(origin=origin, reference=reference, recipes=recipes, paper=paper)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SageConfig:
    """The SAGE options (docs/algorithm.md; Ma et al., BMVC 2022), validated once at construction.

    Raises:
        TypeError: a value of the wrong type (named).
        ValueError: a value out of range or not among the choices, or a broken cross-field rule
            (``blur_kernel`` even; ``saliency_size`` with ``saliency_scale < 1``), naming the options.
    """

    upper_lambda: float = _option(
        0.6, "cap of the anchor's prior share: prior = Beta(a, a) * upper_lambda", origin="recipe",
        paper="upper bound on the anchor's prior share",
        reference="--upper_lambda 1.0",
        recipes="0.6 CIFAR-10 PreActResNet18, 0.5 CIFAR-100 PreActResNet18, 0.7 WRN16-8 and ResNeXt29-4-24",
    )  # fmt: skip
    rand_pos: float = _option(
        0.01, "fraction of the (2H-1)(2W-1) translations evaluated per batch", origin="recipe",
        reference="--rand_pos 0.5", recipes="0.01", paper="share of the translations searched",
    )  # fmt: skip
    update_ratio: float = _option(
        1.0, "r of the loss (1 - r) * l_clean + r * l_mixed, with any mixing mode; 1: no clean term",
        origin="reference", reference="--update_ratio 1.0", paper="weight r of the mixed loss",
        recipes="0.7 PreActResNet18, 0.5 WRN16-8 and ResNeXt29-4-24",
    )  # fmt: skip
    search_size: int | str | None = _option(
        "auto", "search on saliency maps sum-pooled to at most this side; auto: exact up to 48 x 48 pixels, "
        "pooled above so that the search stays a small share of a step (224 x 224: 75 x 75); None (none "
        "on a command line or in YAML): the exact search", kind=SearchSize,
        origin="departure", reference="no option, always the exact search (auto is the same up to 48 x 48)",
    )  # fmt: skip
    saliency_loss: str = _option(
        "bce_softmax",
        "loss of the saliency pass: bce_softmax (BCE of softmax) or cross_entropy (the paper's task loss)",
        choices=SALIENCY_LOSSES,
        kind=str,
        origin="reference",
        reference="no option, BCE of softmax against the one-hot label",
        paper="the task loss",
    )
    saliency_reduce: str = _option(
        "mean_abs", "channel reduction of the input gradient: mean_abs (mean |g|) or l2 (the paper's text)",
        choices=SALIENCY_REDUCTIONS, kind=str, origin="reference",
        reference="no option, mean of |gradient| over channels", paper="L2 norm over channels",
    )  # fmt: skip
    blur_kernel: int = _option(
        5, "Gaussian blur kernel of the saliency maps (odd)", kind=int, origin="reference",
        reference="--kernel_size 5", paper="Gaussian smoothing of the saliency",
    )  # fmt: skip
    blur_sigma: float = _option(
        1.0, "Gaussian blur sigma, in pixels", origin="reference", reference="--blur_sigma 1.0",
        paper="Gaussian smoothing of the saliency",
    )  # fmt: skip
    saliency_scale: float = _option(
        1.0,
        "cheap saliency: the saliency pass runs on the batch resized by this factor in (0, 1]; pair it with "
        "update_ratio 1 (below 1 the clean loss term is taken on the resized batch)",
        origin="reference",
        reference="no option, full resolution",
    )
    rearrangement: str = _option(
        "search", "partner placement: search (paper), or the ablations none / random", choices=REARRANGEMENTS,
        kind=str, origin="reference", reference="no option, always the search",
        paper="the optimal rearrangement: the search over translations",
    )  # fmt: skip
    saliency_mode: str = _option(
        "train", "the model's mode in the saliency pass: train (BatchNorm uses the batch's statistics) or "
        "eval (its running statistics, the reference code's --eval_mode)", choices=SALIENCY_MODES,
        origin="reference", reference="--eval_mode False", paper="train mode",
        kind=str,
    )  # fmt: skip
    saliency_size: int | None = _option(
        None, "cheap saliency at a fixed size: the saliency pass runs on the batch resized so that its "
        "shorter side is this many pixels (aspect kept); images at most this size run at full resolution. "
        "Not with saliency_scale < 1; None: no fixed size", kind=int,
        origin="reference", reference="no option, full resolution",
    )  # fmt: skip
    clean_term: str = _option(
        "separate_pass", "how the (1 - r) clean loss term is trained: separate_pass (reference: the "
        "saliency pass's backward adds (1 - r) d l_clean / d params) or in_batch (a share 1 - r of the "
        "batch stays unmixed, the saliency pass computes input gradients only, loss weight 1)",
        choices=CLEAN_TERMS, kind=str, origin="reference",
        reference="no option, the clean loss's gradient from the saliency pass's own backward",
    )  # fmt: skip

    saliency_compile: str = _option(
        "follow", "how the saliency pass runs the model: follow (compiled when the model is: a "
        "torch.compile'd model, or --torchcompile / torchcompile, with the model's own compiler settings; "
        "eager otherwise) "
        "or eager (always the plain module, eagerly; compiled and eager passes agree to float tolerance)",
        choices=SALIENCY_COMPILES, kind=str, origin="reference", reference="no option, eager PyTorch",
    )  # fmt: skip

    saliency_source: str = _option(
        "gradient", "where the saliency maps come from: gradient (the paper's: input gradient of the loss, a "
        "forward and a backward), cam (the label's class activation map: the last feature map weighted by "
        "the classifier's row for the label, from one no-grad forward) or features (the channel norm of the "
        "last feature map, class-agnostic, one no-grad forward); cam and features are upsampled to the "
        "image, then blurred as the gradient maps are (docs/algorithm.md, forward-only saliency)",
        choices=SALIENCY_SOURCES, kind=str, origin="reference", reference="no option, the input gradient",
        paper="the gradient of the task loss with respect to the input",
    )  # fmt: skip
    saliency_model: str = _option(
        "live", "which model gives the saliency: live (the model being trained) or ema (an EMA copy the "
        "user keeps, e.g. timm's ModelEmaV3: SageMixup(ema_model=...), train.py's --model-ema, "
        "model_ema: true; it runs in the EMA copy's own mode, usually eval)",
        choices=SALIENCY_MODELS, kind=str, origin="reference", reference="no option, the live model",
        paper="the current model",
    )  # fmt: skip

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise int -> float once, here
        set_(self, "upper_lambda", checks.check_fraction("upper_lambda", self.upper_lambda))
        set_(self, "rand_pos", checks.check_fraction("rand_pos", self.rand_pos, open_low=True))
        set_(self, "update_ratio", checks.check_fraction("update_ratio", self.update_ratio, open_low=True))
        if self.search_size == "none":  # the flags' and YAML's spelling of the exact search
            set_(self, "search_size", None)
        checks.check_search_size("search_size", self.search_size)
        checks.check_choice("saliency_loss", self.saliency_loss, SALIENCY_LOSSES)
        checks.check_choice("saliency_reduce", self.saliency_reduce, SALIENCY_REDUCTIONS)
        checks.check_positive_int("blur_kernel", self.blur_kernel)
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd (a centred Gaussian), got {self.blur_kernel}")
        set_(
            self,
            "blur_sigma",
            checks.check_fraction("blur_sigma", self.blur_sigma, high=float("inf"), open_low=True),
        )
        set_(
            self,
            "saliency_scale",
            checks.check_fraction("saliency_scale", self.saliency_scale, open_low=True),
        )
        checks.check_choice("rearrangement", self.rearrangement, REARRANGEMENTS)
        checks.check_choice("saliency_mode", self.saliency_mode, SALIENCY_MODES)
        if self.saliency_size is not None:
            checks.check_positive_int("saliency_size", self.saliency_size)
            if self.saliency_scale < 1:
                raise ValueError(
                    f"saliency_size={self.saliency_size} and saliency_scale={self.saliency_scale} both "
                    "resize the saliency pass; set one of them (saliency_scale 1 with saliency_size)"
                )
        checks.check_choice("clean_term", self.clean_term, CLEAN_TERMS)
        checks.check_choice("saliency_compile", self.saliency_compile, SALIENCY_COMPILES)
        checks.check_choice("saliency_source", self.saliency_source, SALIENCY_SOURCES)
        checks.check_choice("saliency_model", self.saliency_model, SALIENCY_MODELS)
        if (
            self.update_ratio < 1
            and self.clean_term == "separate_pass"
            and (self.saliency_source != "gradient" or self.saliency_model != "live")
        ):
            # The separate_pass clean term is the live model's clean backward, which only the gradient
            # source of the live model runs; a clean backward of its own would cost what the gradient
            # saliency costs and undo the saving (docs/algorithm.md, forward-only saliency).
            raise ValueError(
                f"clean_term='separate_pass' with update_ratio={self.update_ratio} < 1 takes the clean "
                "gradient from the live model's saliency backward, and saliency_source="
                f"{self.saliency_source!r} with saliency_model={self.saliency_model!r} runs none; use "
                "clean_term='in_batch' (the clean term from unmixed images of the batch), update_ratio 1, "
                "or saliency_source='gradient' with saliency_model='live'"
            )

    # ------------------------------------------------------------------------------------ helpers
    def check_image_size(self, height: int, width: int) -> None:
        """The rules that need the image size: the blur's reflect padding needs ``blur_kernel // 2``
        pixels fewer than each side. ValueError naming ``blur_kernel`` otherwise."""
        pad = self.blur_kernel // 2
        if min(height, width) <= pad:
            raise ValueError(
                f"blur_kernel={self.blur_kernel} needs images larger than {pad} pixels per side, got "
                f"{height}x{width}; use a smaller blur_kernel"
            )

    def replace(self, **changes: Any) -> SageConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SageConfig:
        """The preset ``name`` of :data:`SAGE_PRESETS`, with ``overrides`` (SageConfig fields) winning
        over its values; fields neither sets keep SageConfig's defaults.

        A preset of :data:`SAGE_RETIRED_PRESETS` gives its values and warns (``FutureWarning``) why.

        Raises:
            ValueError: an unknown preset (listing the known ones), or a bad override (named).
            TypeError: an override that is not a SageConfig field (named).
        """
        checks.check_choice("preset", name, tuple(SAGE_PRESETS))
        if name in SAGE_RETIRED_PRESETS:
            warnings.warn(
                f"SAGE preset {name!r} is {SAGE_RETIRED_PRESETS[name]}", FutureWarning, stacklevel=2
            )
        return cls(**{**SAGE_PRESETS[name], **overrides})

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, Any],
        *,
        prefix: str = "",
        source: str = "options",
        preset: str | None = None,
    ) -> SageConfig:
        """From ``{prefix + name: value}`` (e.g. ``sage_upper_lambda``); None values keep the default
        (or ``preset``'s value, see :meth:`from_preset`); keys with ``prefix`` that name no option are a
        ValueError listing the known ones."""
        options: dict[str, Any] = {}
        for key, value in values.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name not in cls.names():
                known = ", ".join(prefix + n for n in cls.names())
                raise ValueError(f"unknown SAGE option {key!r} in {source}; known: {known}")
            if value is not None:
                options[name] = value
        try:
            return cls(**options) if preset is None else cls.from_preset(preset, **options)
        except (TypeError, ValueError) as error:
            # Messages start with the option's name: name the key as the user wrote it.
            raise type(error)(f"{source}: {prefix}{error}") from None


@dataclass(frozen=True)
class OptionInfo:
    """One option, for flags, YAML keys and docs: ``name``, ``kind`` (float, int or str), ``default``,
    ``choices`` (None when free), ``help``, where the default comes from (``origin``, ``reference``,
    ``recipes``) and the paper's name for it (``paper``): see :func:`_option`."""

    name: str
    kind: type
    default: Any
    choices: tuple[str, ...] | None
    help: str
    origin: str | None = None
    reference: str | None = None
    recipes: str | None = None
    paper: str | None = None

    @property
    def shown_default(self) -> str:
        """The default as a user writes it: ``0.6``, ``1.0``, ``None``, ``bce_softmax``."""
        return str(self.default)

    @property
    def default_note(self) -> str:
        """Where the default comes from, in words (empty when the field does not say)."""
        if self.origin == "recipe":
            return f"the paper's recipe value; recipes: {self.recipes}; reference code: {self.reference}"
        if self.origin == "reference":
            recipes = f"; recipes: {self.recipes}" if self.recipes else ""
            return f"the reference code's: {self.reference}{recipes}"
        if self.origin == "departure":
            return f"ours, a departure from the reference code: {self.reference}"
        return ""


def option_infos(config: type | None = None) -> tuple[OptionInfo, ...]:
    """Every option of :class:`SageConfig` (or of the dataclass ``config``), in declaration order."""
    keys = ("kind", "choices", "help", "origin", "reference", "recipes", "paper")
    return tuple(
        OptionInfo(name=f.name, default=f.default, **{key: f.metadata.get(key) for key in keys})
        for f in dataclasses.fields(SageConfig if config is None else config)
    )


def option_help(info: OptionInfo) -> str:
    """The help text of the option's flag: meaning, default and where it comes from (argparse-safe)."""
    note = f", {info.default_note}" if info.default_note else ""
    return f"{info.help} (default {info.shown_default}{note})".replace("%", "%%")


SAGE_DEFAULTS = SageConfig()


def add_option_arguments(
    parser: argparse.ArgumentParser, names: tuple[str, ...], *, prefix: str = ""
) -> None:
    """Add ``--[prefix-]name`` flags for the named options, with SageConfig's kinds, choices and defaults."""
    infos = {info.name: info for info in option_infos()}
    for name in names:
        info = infos[name]
        parser.add_argument(
            f"--{prefix}{name.replace('_', '-')}", dest=f"{prefix.replace('-', '_')}{name}", type=info.kind,
            choices=info.choices, default=info.default, help=option_help(info),
        )  # fmt: skip


def config_from_args(args: argparse.Namespace, names: tuple[str, ...], *, prefix: str = "") -> SageConfig:
    """The SageConfig of the flags added by :func:`add_option_arguments` (errors name the flag)."""
    return SageConfig.from_mapping(
        {f"{prefix}{name}": getattr(args, f"{prefix}{name}") for name in names},
        prefix=prefix,
        source="arguments",
    )
