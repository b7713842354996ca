"""Matmuls with frozen weights that keep no weight copy for backward.

TransformerLens 3.9 multiplies by fresh copies of its weights (`F.linear(x, W.T.contiguous())`,
`einops.rearrange(W_Q, ...)`), and `F.linear` saves its weight argument for backward: every block
run with grad holds a copy of its matrices until `backward()` (525 MiB per Qwen2.5-14B block in
bf16, 27.5 GiB for the engine's two forwards over 24 blocks). Backward needs only the parameter,
from which the copy can be remade.

Inside `copy_free_weights(model)`, a `TorchFunctionMode` notes how each tensor computed from the
model's frozen parameters alone was made (a recipe that holds views of the parameters, not new
storage). An `F.linear` whose weight has a recipe and whose input needs grad saves the recipe
instead of the weight, and backward remakes the weight for its one matmul and frees it. The
forward runs the same ops as before and backward the same matmul, so logits and gradients are
bit-identical to TransformerLens's own; only what is kept between them changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

Remake = Callable[[], Tensor]
_RECIPE = "_misalign_lens_remake"


class _LinearRemadeWeight(torch.autograd.Function):
    """`F.linear(x, weight, bias)` for a weight and bias without grad, saving `remake` in place of
    the weight; backward computes only the input's gradient, as autograd does for frozen weights."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, remake: Remake) -> Tensor:
        ctx.remake = remake
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        weight = ctx.remake()
        # As ATen's linear backward: the flattened gradient times the (out, in) weight.
        grad_x = grad.reshape(-1, grad.shape[-1]).mm(weight).view(*grad.shape[:-1], weight.shape[-1])
        return grad_x, None, None, None


class _WeightRecipes(TorchFunctionMode):
    def __init__(self, frozen: set[int]) -> None:
        super().__init__()
        self.frozen = frozen

    def _is_frozen(self, t: Tensor) -> bool:
        """A frozen parameter or a view of one: no storage of its own, its own recipe."""
        return id(t) in self.frozen or (t._base is not None and id(t._base) in self.frozen)

    def _source(self, t: Tensor) -> Remake | None:
        """How to get `t` again without keeping it, or None (it depends on activations)."""
        if self._is_frozen(t):
            return lambda: t
        return getattr(t, _RECIPE, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ARG002
        kwargs = kwargs or {}
        if func is F.linear:
            return self._linear(*args, **kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) and not self._is_frozen(out):
            # Computed before `out` gets its recipe: an in-place op (`out is args[0]`) is then
            # replayed on the argument's old recipe, and one with an activation drops the recipe.
            remake = None if out.requires_grad else self._recipe(func, args, kwargs)
            if remake is not None:
                setattr(out, _RECIPE, remake)
            elif hasattr(out, _RECIPE):
                delattr(out, _RECIPE)
        return out

    def _recipe(self, func, args, kwargs) -> Remake | None:
        """A recipe when every tensor argument is remakeable (a function of frozen weights only)."""
        sources: dict[int, Remake] = {}
        for value in (*args, *kwargs.values()):
            if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
                return None  # cat/stack of weights: not worth tracking
            if isinstance(value, Tensor):
                source = self._source(value)
                if source is None:
                    return None
                sources[id(value)] = source
        if not sources:
            return None  # a fresh tensor (zeros, arange): not a weight
        # The recipe keeps the arguments' recipes, never the arguments (they may be copies).
        plain_args = [None if isinstance(a, Tensor) else a for a in args]
        args_sources = [sources.get(id(a)) if isinstance(a, Tensor) else None for a in args]
        kw_plain = {k: v for k, v in kwargs.items() if not isinstance(v, Tensor)}
        kw_sources = {k: sources[id(v)] for k, v in kwargs.items() if isinstance(v, Tensor)}

        def remake() -> Tensor:
            call = [s() if s is not None else a for s, a in zip(args_sources, plain_args)]
            return func(*call, **kw_plain, **{k: s() for k, s in kw_sources.items()})

        return remake

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        remake = getattr(weight, _RECIPE, None)
        frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
        if remake is None or not frozen or not x.requires_grad or not torch.is_grad_enabled():
            return F.linear(x, weight, bias)
        return _LinearRemadeWeight.apply(x, weight, bias, remake)


@contextlib.contextmanager
def copy_free_weights(model: torch.nn.Module) -> Iterator[None]:
    """Forward passes inside keep no copies of `model`'s frozen weights for backward.

    Parameters that require grad are left alone (their copies are needed for their own
    gradient). Backward may run after the context has exited. Example::

        with copy_free_weights(model):
            loss = loss_fn(model(tokens))
        loss.backward()
    """
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    with _WeightRecipes(frozen):
        yield
