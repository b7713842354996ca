"""A chat data set prepared for training above an adapter's layer: tokenized, length-bucketed
batches with the residual entering the adapter's first block computed once, and the chat model's
reference log-probabilities (exact or top-k) for the KL term."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.adapters.base import Adapter, AdapterSite
from mech.hooks import has_hooks
from mech.models.chat import ChatBatch
from mech.models.placement import block_device
from mech.training.cache import ContentCache, model_identity
from mech.training.config import NonFiniteError
from mech.training.data import ChatData, conversations_of, fingerprint, length_batches, tokenize_conversations
from mech.training.losses import kl_from_logprobs, response_targets, topk_kl


@dataclass
class CachedChatSet:
    """Batches of a chat data set with the residual entering `site.start_at_layer`, computed once."""

    batches: list[ChatBatch]
    residuals: list[Tensor]
    site: AdapterSite
    source: str
    fingerprint: str
    references: list[Any] = field(default_factory=list)
    reference_mode: tuple[str, int] | None = None
    """(mode, k) of the cached `references`, so a set shared by several runs is cached once."""
    cache: ContentCache | None = None
    cache_parts: dict[str, Any] = field(default_factory=dict)
    """What the residuals depend on: the content cache's key for them and the references."""
    store_device: str | None = None
    """Where residuals and references are kept between steps (None: where they were computed,
    the model's device). Each forward moves one batch's to the model's device."""

    @classmethod
    def build(
        cls,
        model: HookedTransformer,
        data: ChatData,
        site: AdapterSite,
        *,
        batch_size: int | None,
        name: str,
        cache: ContentCache | None = None,
        store_device: str | None = None,
    ) -> CachedChatSet:
        """Tokenize `data`, batch it, and run the model up to `site` once (or read the residuals
        from `cache`, keyed by model, data, site and batching). With `store_device` ("cpu") each
        batch's residual goes there as soon as it is computed, pinned when the model is on CUDA."""
        conversations, source = conversations_of(data, name=name)
        examples = tokenize_conversations(
            model.tokenizer, conversations, source=source, max_len=model.cfg.n_ctx
        )
        batches = [b.to(model.cfg.device) for b in length_batches(model.tokenizer, examples, batch_size)]
        data_hash = fingerprint(examples)
        if cache is not None and has_hooks(model):
            cache = None  # hooks change what the model computes; the key cannot see them
        parts = {}
        if cache is not None:
            parts = {"model": model_identity(model), "site": site.start_at_layer,
                     "data": data_hash, "batch_size": batch_size}  # fmt: skip
        kept = {"cache": cache, "cache_parts": parts, "store_device": store_device}
        home = store_device or model.cfg.device
        if cache is not None:
            stored = cache.get_tensors("residuals", parts)
            if stored is not None and len(stored) == len(batches):
                residuals = [
                    _stored(stored[f"batch_{i}"], home, model.cfg.device) for i in range(len(batches))
                ]
                return cls(batches, residuals, site, source, data_hash, **kept)
        residuals = []
        with torch.no_grad():
            for i, batch in enumerate(batches):
                residual = model(batch.tokens, stop_at_layer=site.start_at_layer)
                if not torch.isfinite(residual).all():
                    raise NonFiniteError(
                        f"{source}: the model's residual stream entering block {site.start_at_layer} is "
                        f"not finite in batch {i} (dtype {residual.dtype}; try float32 or bfloat16)"
                    )
                residuals.append(_stored(residual, home, model.cfg.device))
        if cache is not None:
            cache.put_tensors("residuals", parts, {f"batch_{i}": r for i, r in enumerate(residuals)})
        return cls(batches, residuals, site, source, data_hash, **kept)

    def store_on(self, device: str | None, model: HookedTransformer) -> None:
        """Keep residuals and references on `device` from now on (None: the model's device)."""
        self.store_device = device
        home = device or model.cfg.device
        self.residuals = [_stored(r, home, model.cfg.device) for r in self.residuals]
        self.references = [_stored(r, home, model.cfg.device) for r in self.references]

    def residual(self, model: HookedTransformer, i: int) -> Float[Tensor, "batch pos d_model"]:
        """Batch `i`'s cached residual on the device of its first block (a no-op unless stored
        elsewhere)."""
        return _on_model(self.residuals[i], block_device(model, self.site.start_at_layer))

    def logits(
        self, model: HookedTransformer, adapter: Adapter | None, i: int
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of batch `i` with `adapter` active (or the unadapted model if None)."""
        start = self.site.start_at_layer
        if adapter is None:
            return model(self.residual(model, i), start_at_layer=start)
        batch = self.batches[i]
        with adapter.applied(model, start_at_layer=start, response_mask=batch.response_mask):
            return model(self.residual(model, i), start_at_layer=start)

    def target_logits(
        self, model: HookedTransformer, adapter: Adapter | None, i: int
    ) -> Float[Tensor, "n_targets d_vocab"]:
        """Logits at batch `i`'s assistant-predicting positions only.

        The final norm and unembedding act per position, so they run on the needed rows alone
        (TransformerLens's own tail, via `start_at_layer=n_layers`): prompts and pads are
        never unembedded, which matters when d_vocab is large.
        """
        start, end = self.site.start_at_layer, model.cfg.n_layers
        batch = self.batches[i]
        if adapter is None:
            final = model(self.residual(model, i), start_at_layer=start, stop_at_layer=end)
        else:
            with adapter.applied(model, start_at_layer=start, response_mask=batch.response_mask):
                final = model(self.residual(model, i), start_at_layer=start, stop_at_layer=end)
        return model(final[batch.prediction_mask.to(final.device)][None], start_at_layer=end)[0]

    @torch.no_grad()
    def mean_cross_entropy(self, model: HookedTransformer, adapter: Adapter | None) -> float:
        """Cross-entropy per assistant token over the whole set (token-weighted over batches)."""
        total, count = 0.0, 0
        for i, batch in enumerate(self.batches):
            logits = self.target_logits(model, adapter, i).float()
            total += float(
                torch.nn.functional.cross_entropy(
                    logits, response_targets(batch).to(logits.device), reduction="sum"
                )
            )
            count += logits.shape[0]
        return total / count

    def n_targets(self) -> int:
        return sum(int(b.prediction_mask.sum()) for b in self.batches)

    def cache_reference(self, model: HookedTransformer, mode: str, k: int) -> None:
        """Keep the unadapted model's log-probs at assistant positions ("exact"/"topk")."""
        if self.reference_mode == (mode, k):
            return
        self.reference_mode = (mode, k)
        if mode == "recompute":
            self.references = [None] * len(self.batches)
            return
        cache = self.cache if self.cache is not None and not has_hooks(model) else None
        parts = {**self.cache_parts, "mode": mode, "k": k if mode == "topk" else None}
        stored = cache.get_tensors("reference", parts) if cache is not None else None
        home = self.store_device or model.cfg.device
        if stored is not None:
            self.references = [
                _stored(_reference_from(stored, i, mode), home, model.cfg.device)
                for i in range(len(self.batches))
            ]
            return
        references = []
        with torch.no_grad():
            for i in range(len(self.batches)):
                logprobs = self.target_logits(model, None, i).float().log_softmax(-1)
                reference = logprobs if mode == "exact" else torch.topk(logprobs, min(k, logprobs.shape[-1]))
                references.append(_stored(reference, home, model.cfg.device))
        self.references = references
        if cache is not None:
            tensors = {}
            for i, ref in enumerate(references):
                if mode == "exact":
                    tensors[f"batch_{i}"] = ref
                else:
                    tensors[f"batch_{i}.values"], tensors[f"batch_{i}.indices"] = ref.values, ref.indices
            cache.put_tensors("reference", parts, tensors)

    def kl(self, model: HookedTransformer, adapter: Adapter, i: int) -> Float[Tensor, ""]:
        """Mean KL(unadapted || adapted) over batch `i`'s assistant positions."""
        current = self.target_logits(model, adapter, i)
        reference = _on_model(self.references[i], current.device)
        if reference is None:
            with torch.no_grad():
                reference = self.target_logits(model, None, i).float().log_softmax(-1)
        elif not isinstance(reference, Tensor):
            return topk_kl(reference.values, reference.indices, current).mean()
        return kl_from_logprobs(reference, current).mean()


def _reference_from(stored: dict[str, Tensor], i: int, mode: str) -> Any:
    if mode == "exact":
        return stored[f"batch_{i}"]
    return torch.return_types.topk((stored[f"batch_{i}.values"], stored[f"batch_{i}.indices"]))


def _stored(value: Any, device: str | torch.device, model_device: str | torch.device) -> Any:
    """`value` (a tensor, a top-k pair or None) kept on `device`; in host memory it is pinned
    when the model is on CUDA, so that moving a batch to the GPU can run asynchronously."""
    if value is None:
        return None
    if isinstance(value, torch.return_types.topk):
        return torch.return_types.topk(tuple(_stored(t, device, model_device) for t in value))
    value = value.to(device)
    if value.device.type == "cpu" and torch.device(model_device).type == "cuda":
        value = value.pin_memory()
    return value


def _on_model(value: Any, device: torch.device) -> Any:
    """`value` on `device` (where the model uses it): from pinned host memory without blocking
    the host, so the copy queues behind the work already launched."""
    if value is None:
        return None
    if isinstance(value, torch.return_types.topk):
        return torch.return_types.topk(tuple(_on_model(t, device) for t in value))
    return value.to(device, non_blocking=True)
