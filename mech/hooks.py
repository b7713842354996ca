"""Hooks on the residual stream of a layer: add a vector, project a direction out, cache.

Hook points are TransformerLens names. The default point is `blocks.L.hook_resid_post` (the output
of block L's MLP, where the authors add their steering vector and where public SAEs such as Gemma
Scope read) at L = n_layers // 2; `hook_resid_pre` and `hook_resid_mid` are selectable.

Each intervention comes as a list of `(hook_name, fn)` pairs (for `model.run_with_hooks` or
`model.hooks`, handy in notebooks) and as a context manager that removes its hooks on exit.

Token masks: `token_mask[b, t]` selects the positions that are changed; pass a batch's
`attention_mask` so pads are never touched, or its `response_mask` to act on answers only. During
generation with the KV cache (TransformerLens's default), each decoding step sees one new token
per row, which is always changed; any other width mismatch is an error.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from mech.models.load import model_info

ResidPoint = Literal["pre", "mid", "post"]
HookFn = Callable[[Tensor, HookPoint], Tensor]
TokenMask = Int[Tensor, "batch pos"] | Tensor


def default_layer(model: HookedTransformer) -> int:
    """The middle layer, `n_layers // 2` (24 for Qwen2.5-14B's 48 layers)."""
    return model.cfg.n_layers // 2


def check_layer(model: HookedTransformer, layer: object) -> int:
    """Return `layer` as an index in 0..n_layers-1 if the model has it (negative counts from the
    end), else raise. Any integer type is accepted (numpy, 0-d torch); `layer` is typed `object`
    because this is where a wrong type is turned into a clear error."""
    n = model.cfg.n_layers
    try:
        # numpy and 0-d torch integers index too; bools, floats and strings are mistakes.
        index = operator.index(layer) if not isinstance(layer, bool) else None
    except TypeError:
        index = None
    if index is None:
        raise ValueError(f"layer must be an integer, got {type(layer).__name__} {layer!r}")
    if not -n <= index < n:
        raise ValueError(
            f"layer {index} is out of range for model {model_info(model).name!r} with {n} layers (0..{n - 1})"
        )
    return index % n


def has_hooks(model: HookedTransformer) -> bool:
    """Whether any hook is attached to the model now, so what it computes may differ from its
    weights: TransformerLens hook points and plain torch hooks on any of its modules alike (a LoRA
    acts through the latter), and torch's global module hooks."""
    from torch.nn.modules import module as torch_module

    if any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values()):
        return True
    hook_tables = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(m, table, None) for m in model.modules() for table in hook_tables):
        return True
    return any(getattr(torch_module, f"_global{table}", None) for table in hook_tables)


def resid_hook_name(layer: int, point: ResidPoint = "post") -> str:
    """`blocks.{layer}.hook_resid_{point}`."""
    if point not in ("pre", "mid", "post"):
        raise ValueError(f"residual point must be 'pre', 'mid' or 'post', got {point!r}")
    return f"blocks.{layer}.hook_resid_{point}"


def resid_hook(model: HookedTransformer, layer: int | None = None, point: ResidPoint = "post") -> str:
    """The hook name at `layer` (default: the middle layer), checked against the model."""
    layer = default_layer(model) if layer is None else check_layer(model, layer)
    return resid_hook_name(layer, point)


def _check_width(model: HookedTransformer, vector: Tensor, what: str, hook_name: str) -> None:
    if vector.shape != (model.cfg.d_model,):
        raise ValueError(
            f"{what} has shape {tuple(vector.shape)}, but model {model_info(model).name!r} "
            f"has d_model {model.cfg.d_model} (hook {hook_name})"
        )


def _positions(token_mask: TokenMask | None, acts: Tensor) -> Tensor | None:
    """The boolean [batch pos 1] selection for `acts`, or None for every position."""
    if token_mask is None:
        return None
    batch, pos = acts.shape[:2]
    mask = token_mask.to(device=acts.device, dtype=torch.bool)
    if mask.ndim != 2 or mask.shape[0] != batch:
        raise ValueError(f"token_mask has shape {tuple(mask.shape)}; activations are [{batch}, {pos}, ...]")
    if pos == 1 and mask.shape[1] != 1:  # a KV-cached decoding step: one new token per row
        mask = mask.new_ones(batch, 1)
    elif pos != mask.shape[1]:
        raise ValueError(f"token_mask covers {mask.shape[1]} positions; activations have {pos}")
    return mask[..., None]


def add_vector_hook(
    vector: Float[Tensor, " d_model"], *, scale: float = 1.0, token_mask: TokenMask | None = None
) -> HookFn:
    """A hook adding `scale * vector` at the positions of `token_mask` (all if None)."""

    def hook(acts: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> Tensor:  # noqa: ARG001 (TL passes hook=)
        steered = acts + scale * vector.to(acts.device, acts.dtype)
        where = _positions(token_mask, acts)
        return steered if where is None else torch.where(where, steered, acts)

    return hook


def ablate_direction_hook(
    direction: Float[Tensor, " d_model"], *, token_mask: TokenMask | None = None
) -> HookFn:
    """A hook projecting `direction` out: `x - (x . d) d` with d normalised (in float32)."""
    unit = direction.float() / direction.float().norm()

    def hook(acts: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> Tensor:  # noqa: ARG001 (TL passes hook=)
        d = unit.to(acts.device)
        projection = (acts.float() @ d)[..., None] * d
        ablated = (acts.float() - projection).to(acts.dtype)
        where = _positions(token_mask, acts)
        return ablated if where is None else torch.where(where, ablated, acts)

    return hook


def steering_hooks(
    model: HookedTransformer,
    vector: Float[Tensor, " d_model"],
    *,
    layer: int | None = None,
    point: ResidPoint = "post",
    scale: float = 1.0,
    token_mask: TokenMask | None = None,
) -> list[tuple[str, HookFn]]:
    """`[(hook_name, fn)]` adding `scale * vector` to the residual stream at one layer."""
    name = resid_hook(model, layer, point)
    _check_width(model, vector, "steering vector", name)
    return [(name, add_vector_hook(vector, scale=scale, token_mask=token_mask))]


def ablation_hooks(
    model: HookedTransformer,
    direction: Float[Tensor, " d_model"],
    *,
    layers: int | Sequence[int] | Literal["all"] | None = None,
    point: ResidPoint = "post",
    token_mask: TokenMask | None = None,
) -> list[tuple[str, HookFn]]:
    """`[(hook_name, fn)]` projecting `direction` out at each of `layers` (default: the middle one)."""
    if layers is None:
        layers = [default_layer(model)]
    elif layers == "all":
        layers = list(range(model.cfg.n_layers))
    elif isinstance(layers, int):
        layers = [layers]
    names = [resid_hook(model, layer, point) for layer in layers]
    _check_width(model, direction, "ablation direction", names[0])
    if not torch.isfinite(direction).all() or direction.norm() == 0:
        raise ValueError("ablation direction must be finite and non-zero")
    fn = ablate_direction_hook(direction, token_mask=token_mask)
    return [(name, fn) for name in names]


@contextlib.contextmanager
def steering(model: HookedTransformer, vector: Tensor, **kwargs) -> Iterator[HookedTransformer]:
    """Context manager: the model steered by `vector` (arguments as `steering_hooks`).

    Example (not run)::

        with steering(model, v, layer=24, token_mask=batch.attention_mask):
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
    """
    with model.hooks(fwd_hooks=steering_hooks(model, vector, **kwargs)):
        yield model


@contextlib.contextmanager
def ablation(model: HookedTransformer, direction: Tensor, **kwargs) -> Iterator[HookedTransformer]:
    """Context manager: `direction` projected out (arguments as `ablation_hooks`)."""
    with model.hooks(fwd_hooks=ablation_hooks(model, direction, **kwargs)):
        yield model


def cache_residuals(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    layers: Sequence[int],
    point: ResidPoint = "post",
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "layer batch pos d_model"]:
    """Residuals at `layers`, caching only those hook points and stopping after the deepest one."""
    if not layers:
        raise ValueError("cache_residuals needs at least one layer")
    layers = [check_layer(model, layer) for layer in layers]
    names = [resid_hook_name(layer, point) for layer in layers]
    _, cache = model.run_with_cache(
        tokens,
        attention_mask=attention_mask,
        names_filter=lambda name: name in names,
        stop_at_layer=max(layers) + 1,
        return_type=None,
    )
    return torch.stack([cache[name] for name in names])
