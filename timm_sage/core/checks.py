"""Argument checks shared by the public API: each raises TypeError/ValueError naming the argument."""

from __future__ import annotations

import math
from typing import Any

import torch


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(name: str, value: torch.Tensor) -> None:
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (normalised images or maps), got dtype {value.dtype}; "
            f"convert integer images with .float() (and normalise) first"
        )


def check_finite_nonnegative(name: str, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or Inf")
    if bool((value < 0).any()):
        raise ValueError(f"{name} must be non-negative, but its minimum is {float(value.min()):.3g}")


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_search_size(name: str, value: Any) -> int | str | None:
    """A search size: None (the exact search), ``"auto"`` (chosen from the image size) or an int >= 1."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f"{name} must be 'auto', None or an int >= 1, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be 'auto', None or an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be 'auto', None or an int >= 1, got {value}")
    return value


def check_fraction(
    name: str, value: Any, *, low: float = 0.0, high: float = 1.0, open_low: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    too_low = value <= low if open_low else value < low
    if math.isnan(value) or too_low or value > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_permutation(name: str, perm: Any, batch: int) -> torch.Tensor:
    perm = check_tensor(name, perm)
    if perm.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must be an integer tensor, got dtype {perm.dtype}")
    if perm.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match the batch, got {tuple(perm.shape)}")
    perm = perm.long()
    expected = torch.arange(batch, device=perm.device)
    if not torch.equal(torch.sort(perm).values, expected):
        raise ValueError(f"{name} must be a permutation of 0..{batch - 1} (each index exactly once)")
    return perm


def check_generator(name: str, value: Any) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def check_host_generator(name: str, value: Any) -> torch.Generator | None:
    """A CPU ``torch.Generator`` or None: SAGE draws its permutations and candidates on the host, where
    they are de-duplicated and read without a device sync, then sent to the device in one copy."""
    check_generator(name, value)
    if value is not None and value.device.type != "cpu":
        raise ValueError(
            f"{name} must be a CPU torch.Generator (SAGE draws its permutation and candidate translations "
            f"on the host and copies them to the device), got a generator on {value.device}; pass "
            f"torch.Generator() seeded as you like, or seed="
        )
    return value
