"""The clean term of ``update_ratio`` r, carried to the optimizer step by the caller's own backward.

SAGE trains on ``(1 - r) * l_clean + r * l_mixed`` (docs/algorithm.md). The saliency pass already
computes ``g_clean = (1 - r) * d l_clean / d params`` in its one backward; rather than writing it into
``.grad`` there (where a ``zero_grad()`` between the mixer and ``backward()`` would erase it), the SAGE
step keeps it, on the device, in a :class:`CleanGradients`, and returns the mixed loss's weight r as a
:class:`LossWeight`: a 0-dim float32 tensor whose product with a loss, ``loss * loss_weight`` (also
``loss_weight * loss``, ``torch.mul``, ``Tensor.mul``, ``loss *= w`` and ``loss.mul_(w)``, in place), is
``_CleanTerm(loss, r)``: forward ``loss * r``, backward ``grad_output * r`` for the loss and
``sum(grad_output) * g_clean`` for each parameter. The gradient reaching the product carries whatever
the loop did to the loss after it (a GradScaler's scale, an accumulation divisor), so the clean term is
scaled, unscaled, accumulated and all-reduced (DDP's hooks on the parameters' gradient accumulators)
exactly like the mixed loss. Every other operation sees a plain 0-dim tensor and returns plain tensors.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["CleanGradientLostWarning", "CleanGradients", "LossWeight", "weighted_product"]


class CleanGradientLostWarning(UserWarning):
    """A SAGE call's clean gradient (``update_ratio < 1``) never reached a backward pass."""


class CleanGradients:
    """``(1 - r) * d l_clean / d params`` of one SAGE call, kept for the caller's backward.

    ``params``: the parameters that received a gradient (model order). ``flat``: their gradients in one
    float32 buffer (zeros where the saliency pass was not finite), to be multiplied by ``factor`` (the
    saliency pass's ``(1 - r) / loss_scale``, applied in the pass that uses them):
    ``flat * factor`` is ``(1 - r) * d l_clean / d params``. :attr:`pieces`: views of ``flat``, one per
    parameter, in its shape (made at the first backward). ``consumed`` turns True in the first backward
    through a product; ``products`` counts the products whose autograd graph is still alive.
    """

    def __init__(self, params: Sequence[torch.Tensor], flat: torch.Tensor, factor: float = 1.0) -> None:
        self.params = list(params)
        self.factor = float(factor)
        self.flat: torch.Tensor | None = flat
        self._pieces: list[torch.Tensor] | None = None
        self.consumed = False
        self.products = 0

    @property
    def pieces(self) -> list[torch.Tensor] | None:
        """Views of :attr:`flat`, one per parameter in its shape; None once released."""
        if self.flat is None:
            return None
        if self._pieces is None:
            sizes = [p.numel() for p in self.params]
            self._pieces = [
                piece.view(param.shape)
                for param, piece in zip(self.params, self.flat.split(sizes), strict=True)
            ]
        return self._pieces

    def release(self) -> torch.Tensor | None:
        """Drop the kept gradients (the mixer's next call does, once they were consumed or can no longer
        be) and hand back their buffer, which the next SAGE step may overwrite."""
        flat, self.flat, self._pieces = self.flat, None, None
        return flat

    def _product_freed(self) -> None:
        self.products -= 1


class _ProductToken:
    """Lives exactly as long as one product's autograd node (its ``ctx``): counts live products."""

    __slots__ = ("__weakref__",)


class _CleanTerm(torch.autograd.Function):
    """``loss * weight`` whose backward also hands ``sum(grad_output) * g_clean`` to the parameters."""

    @staticmethod
    def forward(
        ctx: Any, loss: torch.Tensor, weight: torch.Tensor, inplace: bool, clean: CleanGradients, *params: Any
    ):
        ctx.save_for_backward(weight)
        ctx.clean = clean
        ctx.token = _ProductToken()
        clean.products += 1
        weakref.finalize(ctx.token, clean._product_freed)
        if inplace:  # loss.mul_(w), which is also what ``loss *= w`` calls
            ctx.mark_dirty(loss)
            return loss.mul_(weight)
        return loss * weight

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        (weight,) = ctx.saved_tensors
        clean: CleanGradients = ctx.clean
        if clean.pieces is None:
            raise RuntimeError(
                "timm_sage: the clean gradients of this loss_weight were released at the mixer's next call, "
                "after a first backward had used them; run every backward through a loss weighted by it "
                "before the mixer's next call"
            )
        clean.consumed = True
        # The product's own gradient: what reached it from the loss (scale, divisor) summed over its
        # elements, so a per-image loss weighted and then averaged still counts the clean term once.
        total = (grad_output.sum() if grad_output.ndim else grad_output).float() * clean.factor
        wanted = ctx.needs_input_grad[4:]
        params = [piece for piece, need in zip(clean.pieces, wanted, strict=True) if need]
        scaled = iter(torch._foreach_mul(params, total) if params else [])
        grads = [next(scaled) if need else None for need in wanted]
        return (grad_output * weight if ctx.needs_input_grad[0] else None), None, None, None, *grads


_PRODUCTS = frozenset(
    (
        torch.mul,
        torch.multiply,
        torch.Tensor.mul,
        torch.Tensor.multiply,
        torch.Tensor.__mul__,
        torch.Tensor.__rmul__,
        torch.Tensor.mul_,
    )
)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    with torch._C.DisableTorchFunctionSubclass():
        return tensor.detach()


def weighted_product(
    loss: torch.Tensor, weight: torch.Tensor, clean: CleanGradients, *, inplace: bool = False
) -> torch.Tensor:
    """``loss * weight`` (``loss.mul_(weight)`` with ``inplace``; weight 0-dim) whose backward adds
    ``sum(grad_output) * g_clean`` to the parameters' gradients. A plain product where no backward can
    follow (no grad mode, or a loss that needs no gradient)."""
    if not (torch.is_grad_enabled() and loss.requires_grad and clean.flat is not None):
        return loss.mul_(weight) if inplace else loss * weight
    return _CleanTerm.apply(loss, weight, inplace, clean, *clean.params)


class LossWeight(torch.Tensor):
    """The mixed loss's weight r (0-dim float32, on the batch's device) carrying the clean term.

    Multiplying a loss by it (``loss * w``, ``w * loss``, ``torch.mul``, ``Tensor.mul``, ``loss *= w``,
    ``loss.mul_(w)``) returns a plain tensor whose backward also adds ``(1 - r) * d l_clean / d params``,
    scaled by the gradient that reaches the product. Any other use (``float(w)``, ``w.item()``,
    ``w + 1``) is that of a plain 0-dim tensor, with plain results. The clean gradients are released at
    the mixer's next call once a backward consumed them.
    """

    clean: CleanGradients

    @staticmethod
    def __new__(cls, value: torch.Tensor, clean: CleanGradients) -> LossWeight:
        if value.ndim != 0:
            raise ValueError(f"a loss weight is a 0-dim tensor, got shape {tuple(value.shape)}")
        self = torch.Tensor._make_subclass(cls, value.detach())
        self.clean = clean
        return self

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS and len(args) == 2 and not kwargs:
            first, second = args
            weight, loss = (first, second) if isinstance(first, LossWeight) else (second, first)
            inplace = func is torch.Tensor.mul_
            if (
                isinstance(loss, torch.Tensor)
                and not isinstance(loss, LossWeight)
                and loss.is_floating_point()
                and not (inplace and loss is not first)  # w.mul_(x) changes the weight: a plain op
            ):
                return weighted_product(loss, _plain(weight), weight.clean, inplace=inplace)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"LossWeight({_plain(self)!r})"

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickled or deep-copied (a copy of the mixer), it is the plain weight: the clean gradients belong
        # to this process's backward only.
        return _plain(self).clone().__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict) -> torch.Tensor:
        return _plain(self).clone()
