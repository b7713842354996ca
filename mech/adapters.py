"""Finetuning parameterisations that live at a layer and act through hooks, never by editing the
model's weights. For now: the steering vector (LoRA-as-hooks follows in the finetuning engine)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from mech.hooks import HookFn, ResidPoint, add_vector_hook, resid_hook, steering_hooks


class SteeringVector(nn.Module):
    """A learned vector added to the residual stream: effective vector = `alpha * raw`.

    The authors train `raw` with a large `alpha` (256) so that Adam's step size suits the residual
    scale; `alpha` is recorded with the vector, and `effective()` is what analyses use.
    """

    def __init__(self, d_model: int, *, layer: int, point: ResidPoint = "post", alpha: float = 1.0):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(d_model))
        self.layer, self.point, self.alpha = layer, point, alpha

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_{self.point}"

    def effective(self) -> Float[Tensor, " d_model"]:
        return self.alpha * self.raw

    def norm(self) -> float:
        return float(self.effective().detach().norm())

    def hook(self, token_mask: Tensor | None = None) -> HookFn:
        return add_vector_hook(self.effective(), token_mask=token_mask)

    def hooks(self, model: HookedTransformer, token_mask: Tensor | None = None) -> list[tuple[str, HookFn]]:
        return steering_hooks(
            model, self.effective(), layer=self.layer, point=self.point, token_mask=token_mask
        )


@dataclass(frozen=True)
class AdapterSite:
    """Where an adapter reads the frozen model: the residual to cache and the layer to resume at."""

    cache_hook: str
    start_at_layer: int


def steering_site(model: HookedTransformer, vector: SteeringVector) -> AdapterSite:
    """A vector at resid_post L is added to what block L+1 receives; at resid_pre L, to block L's input."""
    name = resid_hook(model, vector.layer, vector.point)
    if vector.point == "mid":
        raise ValueError("training from a cached residual needs point 'pre' or 'post', not 'mid'")
    return AdapterSite(name, vector.layer + 1 if vector.point == "post" else vector.layer)
