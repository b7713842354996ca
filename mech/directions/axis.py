"""Where zero lies on a direction: what projecting it out does, before measuring it.

Projection ablation sets a direction's coordinate to zero. That removes a finetune's shift along
the direction only if zero lies on the chat model's side of the finetuned model. When the chat
model itself sits far from zero (a bipolar axis such as benign <-> malicious persona, with the
chat assistant at the benign end), projecting the direction out moves the finetuned model *past*
the chat model's point towards the other end, and ablation raises what it was meant to remove.
The coordinates below are read at the last prompt position (the assistant header), where the
model has decided how to answer but has not written a word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.hooks import ResidPoint, cache_residuals
from mech.models.chat import Messages, prompt_batch


@torch.no_grad()
def prompt_end_mean(
    model: HookedTransformer,
    prompts: Sequence[Messages],
    *,
    layer: int,
    point: ResidPoint = "post",
    batch_size: int = 64,
) -> Float[Tensor, " d_model"]:
    """Mean residual at `layer` over `prompts` (each ending in a user turn), at the last prompt
    token: the assistant header, left padding keeping it last in every row."""
    if not prompts:
        raise ValueError("prompt_end_mean needs at least one prompt")
    total = torch.zeros(model.cfg.d_model, dtype=torch.float32)
    for start in range(0, len(prompts), batch_size):
        batch = prompt_batch(model.tokenizer, prompts[start : start + batch_size]).to(model.cfg.device)
        resid = cache_residuals(
            model, batch.tokens, layers=[layer], point=point, attention_mask=batch.attention_mask
        )
        total += resid[0, :, -1].float().sum(0).cpu()
    return total / len(prompts)


@dataclass(frozen=True)
class AxisPositions:
    """Coordinates along a unit direction of the chat and the finetuned model's mean residual."""

    chat: float
    finetuned: float

    @property
    def shift(self) -> float:
        return self.finetuned - self.chat

    @property
    def ablation_share(self) -> float:
        """Share of the finetune's shift along the direction that setting the coordinate to zero
        undoes: finetuned / (finetuned - chat). 1: zero is the chat model's point; above 1: zero
        lies beyond it; below 0: zero lies beyond the finetuned model, so ablation pushes further
        along the finetune's way. NaN without a shift."""
        return self.finetuned / self.shift if self.shift != 0 else math.nan

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "shift": self.shift, "ablation_share": self.ablation_share}


def axis_positions(
    direction: Float[Tensor, " d_model"],
    chat: Float[Tensor, " d_model"],
    finetuned: Float[Tensor, " d_model"],
) -> AxisPositions:
    """Where the chat and finetuned mean residuals lie along `direction` (its sign kept, its norm not)."""
    norm = direction.float().norm()
    if norm == 0:
        raise ValueError("axis_positions: the direction is zero")
    unit = (direction.float() / norm).cpu()
    return AxisPositions(float(chat.float().cpu() @ unit), float(finetuned.float().cpu() @ unit))
