"""Steering vectors: a learned vector added to the residual stream at one layer."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from mech.adapters.base import Adapter, AdapterSite
from mech.adapters.noise import orthogonal_noise
from mech.hooks import ResidPoint, add_vector_hook, check_layer, resid_hook_name
from mech.models.placement import block_device


class SteeringVector(Adapter):
    """A learned vector added to the residual stream at every position: `alpha * raw`.

    The authors train `raw` with a large `alpha` (256) so that Adam's step size suits the residual
    scale; `alpha` is recorded with the vector, and `effective()` is what analyses use. Noise
    unit for `perturbed`: the whole vector. `response_only` steers only assistant tokens.
    """

    kind = "steering_vector"

    def __init__(
        self,
        d_model: int,
        *,
        layer: int,
        point: ResidPoint = "post",
        alpha: float = 1.0,
        response_only: bool = False,
        init_std: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if point not in ("pre", "post"):
            raise ValueError(f"a steering vector sits at resid 'pre' or 'post', not {point!r}")
        if alpha == 0:
            raise ValueError("alpha must be non-zero")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(
                f"a steering vector's layer must be an integer >= 0, got {layer!r} (it is built without "
                "the model, so it cannot count from the end: use model.cfg.n_layers - 1)"
            )
        init = torch.zeros(d_model)
        if init_std:
            init = init_std * torch.randn(d_model, generator=torch.Generator().manual_seed(seed)) / alpha
        self.raw = nn.Parameter(init)
        self.layer, self.point, self.alpha, self.response_only = layer, point, alpha, response_only

    @property
    def hook_name(self) -> str:
        return resid_hook_name(self.layer, self.point)

    def effective(self) -> Float[Tensor, " d_model"]:
        return self.alpha * self.raw

    def entry(self, model: HookedTransformer) -> AdapterSite:
        check_layer(model, self.layer)
        if self.point == "post" and self.layer + 1 < model.cfg.n_layers:
            # resid_post L is exactly what block L+1 receives: block L never needs recomputing.
            return AdapterSite(self.hook_name, self.layer + 1)
        return AdapterSite(resid_hook_name(self.layer, "pre"), self.layer)

    def _acting_hook(self, start_at_layer: int | None) -> str:
        if start_at_layer is None or start_at_layer <= self.layer:
            return self.hook_name
        if self.point == "post" and start_at_layer == self.layer + 1:
            return resid_hook_name(self.layer + 1, "pre")
        raise ValueError(
            f"a vector at {self.hook_name} cannot act on a forward pass starting at block {start_at_layer}"
        )

    def place(self, model: HookedTransformer) -> SteeringVector:
        """On block `layer`'s device (the hook moves it where a forward pass meets it)."""
        return self.to(block_device(model, check_layer(model, self.layer) % model.cfg.n_layers))

    def applied(
        self,
        model: HookedTransformer,
        *,
        start_at_layer: int | None = None,
        response_mask: Bool[Tensor, "batch pos"] | None = None,
    ) -> contextlib.AbstractContextManager:
        check_layer(model, self.layer)
        if self.raw.shape != (model.cfg.d_model,):
            raise ValueError(
                f"steering vector has width {self.raw.shape[0]}; model d_model is {model.cfg.d_model}"
            )
        if self.response_only and response_mask is None:
            raise ValueError("this steering vector acts on response positions only: pass response_mask")
        mask = response_mask if self.response_only else None
        hook = add_vector_hook(self.effective(), token_mask=mask)
        return model.hooks(fwd_hooks=[(self._acting_hook(start_at_layer), hook)])

    def update_norm_sq(self) -> Float[Tensor, ""]:
        return self.effective().float().pow(2).sum()

    def update_inner(self, other: Adapter) -> Float[Tensor, ""]:
        if not isinstance(other, SteeringVector) or other.hook_name != self.hook_name:
            raise ValueError(f"cannot compare a vector at {self.hook_name} with {other.spec()}")
        return (self.effective().float() * other.effective().float()).sum()

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "d_model": self.raw.shape[0], "layer": self.layer, "point": self.point,
            "alpha": self.alpha, "response_only": self.response_only,
        }  # fmt: skip

    def _scale_update_(self, s: float) -> None:
        self.raw.mul_(s)

    def _perturb_(self, eps: float, generator: torch.Generator) -> None:
        self.raw.copy_(orthogonal_noise(self.raw, eps, generator))
