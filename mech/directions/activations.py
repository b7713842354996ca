"""Activations pooled over the tokens of answers or texts, at any set of layers: the sums and token
counts mean-diff directions and probes are built from. Only answer tokens count (assistant
content and end-of-turn marker), never the assistant header or padding."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.hooks import ResidPoint, check_layer, resid_hook_name
from mech.models.chat import chat_batch, collate, pad_token_id

Pooling = Literal["token", "answer"]


@dataclass(frozen=True)
class PooledActivations:
    """Per-example sums of residuals over the selected tokens, and the token counts.

    `sums[l, i]` is the sum over example i's selected tokens at `layers[l]`; token-pooled means
    of any subset follow from sums and counts without re-running the model.
    """

    sums: Float[Tensor, "layer example width"]
    counts: Int[Tensor, " example"]
    layers: tuple[int, ...]
    point: ResidPoint

    def per_example(self) -> Float[Tensor, "layer example width"]:
        """Each example's mean residual over its selected tokens."""
        return self.sums / self.counts.clamp(min=1)[None, :, None]

    def pooled(self, rows: Bool[Tensor, " example"] | Tensor, pooling: Pooling = "token") -> Float[Tensor, "layer width"]:  # fmt: skip
        """Mean over the `rows` examples: every token equal ("token") or every example equal ("answer")."""
        rows = rows.to(self.sums.device).bool()
        if not rows.any():
            raise ValueError("no example selected")
        if pooling == "token":
            return self.sums[:, rows].sum(1) / self.counts[rows].sum()
        if pooling == "answer":
            return self.per_example()[:, rows].mean(1)
        raise ValueError(f"pooling must be 'token' or 'answer', got {pooling!r}")

    def layer(self, layer: int) -> int:
        """Index of `layer` in `layers`."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not cached; cached layers are {list(self.layers)}")
        return self.layers.index(layer)


@torch.no_grad()
def pooled_activations(
    model: HookedTransformer,
    batches: Sequence[tuple[Tensor, Tensor, Tensor]],
    *,
    layers: Sequence[int] | None = None,
    point: ResidPoint = "post",
    transform: Callable[[Tensor], Tensor] | None = None,
) -> PooledActivations:
    """Residual sums over selected tokens for `(tokens, attention_mask, select)` batches, each
    `[batch, pos]` (widths differ from batch to batch, hence no shape annotation).

    Only the needed hook points are cached, and the forward pass stops after the deepest one.
    `transform` maps each token's residual first (e.g. an SAE's encoder: pooled latents, which
    differ from the latents of pooled residuals). Sums are float32 (accumulated at full precision
    whatever the model's dtype), on the model's device, as are the counts.
    """
    layers = (
        tuple(range(model.cfg.n_layers)) if layers is None else tuple(check_layer(model, n) for n in layers)
    )
    if not layers:
        raise ValueError("at least one layer is needed")
    names = [resid_hook_name(n, point) for n in layers]
    device = torch.device(model.cfg.device)
    sums, counts = [], []
    for tokens, attention_mask, select in batches:
        tokens, attention_mask, select = (t.to(device) for t in (tokens, attention_mask, select))
        _, cache = model.run_with_cache(
            tokens, attention_mask=attention_mask, names_filter=lambda name: name in names,
            stop_at_layer=max(layers) + 1, return_type=None,
        )  # fmt: skip
        weights = (select.bool() & attention_mask.bool()).float()
        acts = [cache[n].float() if transform is None else transform(cache[n].float()) for n in names]
        # Blocks may sit on several devices: each layer's sum is brought back to the model's.
        per_layer = [torch.einsum("bpd,bp->bd", a, weights.to(a.device)).to(device) for a in acts]
        sums.append(torch.stack(per_layer))
        counts.append(weights.sum(1).long())
    return PooledActivations(torch.cat(sums, 1), torch.cat(counts), layers, point)


def answer_batches(
    model: HookedTransformer, conversations: Sequence[Sequence[Mapping[str, str]]], *, batch_size: int = 32
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Batches of full conversations selecting the assistant tokens (content + end-of-turn)."""
    out = []
    for start in range(0, len(conversations), batch_size):
        batch = chat_batch(model.tokenizer, conversations[start : start + batch_size])
        out.append((batch.tokens, batch.attention_mask, batch.response_mask))
    return out


def text_batches(model: HookedTransformer, texts: Sequence[str], *, batch_size: int = 32) -> list[tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """Batches of plain texts (e.g. pre-training documents) selecting every real token."""
    tokenizer, out = model.tokenizer, []
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start : start + batch_size]]
        batch = collate(ids, pad_token_id=pad_token_id(tokenizer))
        out.append((batch.tokens, batch.attention_mask, batch.attention_mask.bool()))
    return out


def conversations_from_answers(frame: pd.DataFrame) -> list[list[dict[str, str]]]:
    """Chats (optional system, user question, assistant answer) from a frame of answers."""
    missing = {"question", "answer"} - set(frame.columns)
    if missing:
        raise ValueError(f"answers need columns {sorted(missing)}")
    systems = frame["system"] if "system" in frame.columns else [None] * len(frame)
    return [
        ([{"role": "system", "content": s}] if isinstance(s, str) and s else [])
        + [{"role": "user", "content": str(q)}, {"role": "assistant", "content": str(a)}]
        for q, a, s in zip(frame["question"], frame["answer"], systems, strict=True)
    ]
