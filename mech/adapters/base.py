"""Finetuning parameterisations that live at a layer and act through hooks, never by editing the
model's weights. This module holds the interface and `AdapterStack` (several adapters as one update);
the kinds are `mech.adapters.steering.SteeringVector` and `mech.adapters.lora.LoraAdapter`.

Every adapter answers the questions the paper's analyses ask of it:
- `norm()` is the norm of its *effective update* (the vector added, or ||Delta W||_F over its
  matrices), the quantity efficiency is compared at; `update_norm_sq()` is its differentiable
  square (the L2 norm control) and `cosine(other)` compares two updates;
- `parameters_flat()` is the trainable tensors, flattened;
- `scaled(s)` multiplies the update by s (`scaled(1)` is an exact copy), `perturbed(eps, g)` applies
  orthogonal noise (`mech.adapters.noise`) to each unit the class names;
- `entry(model)` says which residual to cache and at which block training can resume, because
  nothing below the adapter changes; `applied(model, ...)` is a context manager with it active.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from mech.models.placement import block_device


@dataclass(frozen=True)
class AdapterSite:
    """Where an adapter first touches the model: cache `cache_hook`, resume at `start_at_layer`."""

    cache_hook: str
    start_at_layer: int


AdapterT = TypeVar("AdapterT", bound="Adapter")


class Adapter(nn.Module):
    """Base class; subclasses implement the methods that raise NotImplementedError."""

    kind: str = "adapter"

    def entry(self, model: HookedTransformer) -> AdapterSite:
        raise NotImplementedError

    def place(self: AdapterT, model: HookedTransformer) -> AdapterT:
        """Move the parameters to the device of the block they act in (a model split over GPUs
        by `mech.models.placement` has several). In place; returns self."""
        return self.to(block_device(model, min(self.entry(model).start_at_layer, model.cfg.n_layers - 1)))

    def applied(
        self,
        model: HookedTransformer,
        *,
        start_at_layer: int | None = None,
        response_mask: Bool[Tensor, "batch pos"] | None = None,
    ) -> contextlib.AbstractContextManager:
        """Context manager: the adapter acts on every forward pass of `model` inside it.

        `start_at_layer` tells it that forward passes start at that block (from a cached
        residual); `response_mask` is used by adapters restricted to response positions.
        """
        raise NotImplementedError

    def update_norm_sq(self) -> Float[Tensor, ""]:
        raise NotImplementedError

    def update_inner(self, other: Adapter) -> Float[Tensor, ""]:
        """Inner product of the two effective updates (same kind and sites)."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description from which `mech.adapters.saving` rebuilds the adapter."""
        raise NotImplementedError

    def _scale_update_(self, s: float) -> None:
        raise NotImplementedError

    def _perturb_(self, eps: float, generator: torch.Generator) -> None:
        raise NotImplementedError

    def norm(self) -> float:
        return float(self.update_norm_sq().detach().sqrt())

    def cosine(self, other: Adapter) -> float:
        inner = self.update_inner(other).detach()
        return float(inner / (self.update_norm_sq().detach().sqrt() * other.update_norm_sq().detach().sqrt()))

    def parameters_flat(self) -> Float[Tensor, " n_params"]:
        return torch.cat([p.detach().flatten() for p in self.parameters()])

    def scaled(self: AdapterT, s: float | int) -> AdapterT:
        """A copy whose effective update is `s` times this one's."""
        new = copy.deepcopy(self)
        with torch.no_grad():
            new._scale_update_(float(s))
        return new

    def perturbed(self: AdapterT, eps: float | int, generator: torch.Generator) -> AdapterT:
        """A copy with orthogonal noise of strength `eps` on each of the class's noise units."""
        new = copy.deepcopy(self)
        with torch.no_grad():
            new._perturb_(float(eps), generator)
        return new


class AdapterStack(Adapter):
    """Several adapters acting together (e.g. a steering vector at every layer); one update.

    Norms, inner products, scaling and noise act on the concatenation of the members' updates;
    noise units are the members' own units, drawn in order from one generator.
    """

    kind = "stack"

    def __init__(self, adapters: Sequence[Adapter]):
        super().__init__()
        if not adapters:
            raise ValueError("an AdapterStack needs at least one adapter")
        self.adapters = nn.ModuleList(adapters)

    def entry(self, model: HookedTransformer) -> AdapterSite:
        return min((a.entry(model) for a in self.adapters), key=lambda site: site.start_at_layer)

    def place(self, model: HookedTransformer) -> AdapterStack:
        for adapter in self.adapters:
            adapter.place(model)
        return self

    @contextlib.contextmanager
    def applied(
        self,
        model: HookedTransformer,
        *,
        start_at_layer: int | None = None,
        response_mask: Bool[Tensor, "batch pos"] | None = None,
    ) -> Iterator[HookedTransformer]:
        with contextlib.ExitStack() as stack:
            for adapter in self.adapters:
                stack.enter_context(
                    adapter.applied(model, start_at_layer=start_at_layer, response_mask=response_mask)
                )
            yield model

    def update_norm_sq(self) -> Float[Tensor, ""]:
        return torch.stack([a.update_norm_sq() for a in self.adapters]).sum()

    def update_inner(self, other: Adapter) -> Float[Tensor, ""]:
        if not isinstance(other, AdapterStack) or len(other.adapters) != len(self.adapters):
            raise ValueError("can only compare stacks with the same members")
        return torch.stack(
            [a.update_inner(b) for a, b in zip(self.adapters, other.adapters, strict=True)]
        ).sum()

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "adapters": [a.spec() for a in self.adapters]}

    def _scale_update_(self, s: float) -> None:
        for adapter in self.adapters:
            adapter._scale_update_(s)

    def _perturb_(self, eps: float, generator: torch.Generator) -> None:
        for adapter in self.adapters:
            adapter._perturb_(eps, generator)
