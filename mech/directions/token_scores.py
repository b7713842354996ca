"""Per-token numbers of one conversation, for token views: the projection of each position's
residual onto a direction, and each token's log-probability given its prefix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.hooks import ResidPoint, check_layer, resid_hook_name
from mech.models.chat import tokenize_chat


def chat_tokens(
    model: HookedTransformer, conversation: Sequence[Mapping[str, str]]
) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and its assistant-token mask."""
    tokenized = tokenize_chat(model.tokenizer, [dict(m) for m in conversation])
    return tokenized.tokens, tokenized.response_mask


def _tokens(model: HookedTransformer, ids: Sequence[int]) -> Tensor:
    """One sequence of token ids as a [1, pos] batch on the model's device."""
    return torch.tensor([list(ids)], dtype=torch.long, device=model.cfg.device)


def token_strings(model: HookedTransformer, ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own (what a token view shows)."""
    return [model.tokenizer.decode([i]) for i in ids]


@torch.no_grad()
def token_projection(
    model: HookedTransformer,
    ids: Sequence[int],
    direction: Float[Tensor, " d_model"],
    *,
    layer: int,
    point: ResidPoint = "pre",
) -> Float[Tensor, " pos"]:
    """Each position's residual at `layer` projected on the unit `direction` (hooks in force apply)."""
    layer = check_layer(model, layer)
    name = resid_hook_name(layer, point)
    _, cache = model.run_with_cache(_tokens(model, ids), names_filter=lambda n: n == name,
                                    stop_at_layer=layer + 1, return_type=None)  # fmt: skip
    unit = direction.float() / direction.float().norm()
    return cache[name][0].float() @ unit.to(cache[name].device)


@torch.no_grad()
def token_logprobs(model: HookedTransformer, ids: Sequence[int]) -> Float[Tensor, " pos"]:
    """log p(token t | tokens < t) for every position (0 for the first, which has no prefix)."""
    tokens = _tokens(model, ids)
    logits = model(tokens)
    logprobs = logits.float().log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None].to(logits.device))[:, 0]
    return torch.cat([logprobs.new_zeros(1), logprobs])


@torch.no_grad()
def attention_patterns(model: HookedTransformer, ids: Sequence[int], *, layer: int, heads: Sequence[int] | None = None) -> Float[Tensor, "head dest src"]:  # fmt: skip
    """Attention patterns of `heads` (default: all) of block `layer` on one sequence."""
    layer = check_layer(model, layer)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(_tokens(model, ids), names_filter=lambda n: n == name,
                                    stop_at_layer=layer + 1, return_type=None)  # fmt: skip
    pattern = cache[name][0].float()
    if heads is not None:
        bad = [h for h in heads if not 0 <= h < model.cfg.n_heads]
        if bad:
            raise ValueError(f"heads {bad} out of range: block {layer} has {model.cfg.n_heads} heads")
        pattern = pattern[list(heads)]
    return pattern
