"""SageConfig: every SAGE option, its default, its choices and its cross-field rules, defined once.

Every entry point derives from this class: :class:`timm_sage.SageMixup`'s keyword arguments, the
plugin's and launcher's ``--sage-*`` flags, ``timm-sage train``'s ``sage_*`` YAML keys, the torchvision
and albumentations transforms, and the option table of ``docs/algorithm.md``. Adding an option means
adding one field here (with its ``help``) and using it.

Defaults are the reference code's (SAGE.md); the study and cost options default to the paper's method.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from timm_sage.core import checks

__all__ = [
    "SAGE_DEFAULTS",
    "OptionInfo",
    "SageConfig",
    "add_option_arguments",
    "config_from_args",
    "option_infos",
]

SALIENCY_LOSSES = ("bce_softmax", "cross_entropy")
SALIENCY_REDUCTIONS = ("mean_abs", "l2")
REARRANGEMENTS = ("search", "none", "random")
SALIENCY_MODES = ("train", "eval")
CLEAN_TERMS = ("separate_pass", "in_batch")


def _option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, kind: type = float) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "kind": kind})


@dataclass(frozen=True)
class SageConfig:
    """The SAGE options (SAGE.md), validated once at construction.

    Raises:
        TypeError: a value of the wrong type (named).
        ValueError: a value out of range or not among the choices, or a broken cross-field rule
            (``blur_kernel`` even; ``saliency_size`` with ``saliency_scale < 1``), naming the options.
    """

    upper_lambda: float = _option(0.6, "cap of the anchor's prior share: prior = Beta(a, a) * upper_lambda")
    rand_pos: float = _option(0.01, "fraction of the (2H-1)(2W-1) translations evaluated per batch")
    update_ratio: float = _option(
        1.0, "r of the loss (1 - r) * l_clean + r * l_mixed; 1: the clean pass serves saliency only"
    )
    search_size: int | None = _option(
        None, "search on saliency maps sum-pooled to at most this side (None: exact search)", kind=int
    )
    saliency_loss: str = _option(
        "bce_softmax",
        "loss of the saliency pass (reference: BCE of softmax)",
        choices=SALIENCY_LOSSES,
        kind=str,
    )
    saliency_reduce: str = _option(
        "mean_abs", "channel reduction of the input gradient (reference: mean |g|)",
        choices=SALIENCY_REDUCTIONS, kind=str,
    )  # fmt: skip
    blur_kernel: int = _option(5, "Gaussian blur kernel of the saliency maps (odd)", kind=int)
    blur_sigma: float = _option(1.0, "Gaussian blur sigma, in pixels")
    saliency_scale: float = _option(
        1.0,
        "cheap saliency: the saliency pass runs on the batch resized by this factor in (0, 1]; pair it with "
        "update_ratio 1 (below 1 the clean loss term is taken on the resized batch)",
    )
    rearrangement: str = _option(
        "search", "partner placement: search (paper), or the ablations none / random", choices=REARRANGEMENTS,
        kind=str,
    )  # fmt: skip
    saliency_mode: str = _option(
        "train", "the model's mode in the saliency pass: train (reference default; BatchNorm uses batch "
        "statistics) or eval (the reference's --eval_mode: running statistics)", choices=SALIENCY_MODES,
        kind=str,
    )  # fmt: skip
    saliency_size: int | None = _option(
        None, "cheap saliency at a fixed size: the saliency pass runs on the batch resized so that its "
        "shorter side is this many pixels (aspect kept); images at most this size run at full resolution. "
        "Not with saliency_scale < 1 (None: no fixed size)", kind=int,
    )  # fmt: skip
    clean_term: str = _option(
        "separate_pass", "how the (1 - r) clean loss term is trained: separate_pass (reference: the "
        "saliency pass's backward adds (1 - r) d l_clean / d params) or in_batch (a share 1 - r of the "
        "batch stays unmixed, the saliency pass computes input gradients only, loss weight 1)",
        choices=CLEAN_TERMS, kind=str,
    )  # fmt: skip

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise int -> float once, here
        set_(self, "upper_lambda", checks.check_fraction("upper_lambda", self.upper_lambda))
        set_(self, "rand_pos", checks.check_fraction("rand_pos", self.rand_pos, open_low=True))
        set_(self, "update_ratio", checks.check_fraction("update_ratio", self.update_ratio, open_low=True))
        if self.search_size is not None:
            checks.check_positive_int("search_size", self.search_size)
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
    def from_mapping(
        cls, values: Mapping[str, Any], *, prefix: str = "", source: str = "options"
    ) -> SageConfig:
        """From ``{prefix + name: value}`` (e.g. ``sage_upper_lambda``); None values keep the default;
        keys with ``prefix`` that name no option are a ValueError listing the known ones."""
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
            return cls(**options)
        except (TypeError, ValueError) as error:
            # Messages start with the option's name: name the key as the user wrote it.
            raise type(error)(f"{source}: {prefix}{error}") from None


@dataclass(frozen=True)
class OptionInfo:
    """One option, for flags, YAML keys and docs: ``name``, ``kind`` (float, int or str), ``default``,
    ``choices`` (None when free) and ``help``."""

    name: str
    kind: type
    default: Any
    choices: tuple[str, ...] | None
    help: str


def option_infos() -> tuple[OptionInfo, ...]:
    """Every option of :class:`SageConfig`, in declaration order."""
    return tuple(
        OptionInfo(f.name, f.metadata["kind"], f.default, f.metadata["choices"], f.metadata["help"])
        for f in dataclasses.fields(SageConfig)
    )


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
            choices=info.choices, default=info.default, help=f"{info.help} (default {info.default})",
        )  # fmt: skip


def config_from_args(args: argparse.Namespace, names: tuple[str, ...], *, prefix: str = "") -> SageConfig:
    """The SageConfig of the flags added by :func:`add_option_arguments` (errors name the flag)."""
    return SageConfig.from_mapping(
        {f"{prefix}{name}": getattr(args, f"{prefix}{name}") for name in names},
        prefix=prefix,
        source="arguments",
    )
